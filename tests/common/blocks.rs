//! The one allocator of test addresses. Each test (or bench) that binds loopback
//! addresses owns a block, 127.<block>.x.y, listed here once; `block(name)` gives a
//! test its own, and a test below fails when a block has two owners. Tests in one
//! binary run in parallel, so two owners of a block would collide on its ports.

#![allow(dead_code)]

/// Every block and its owner: `file::test` for the in-process tests, which ask
/// [`block`] for theirs, or the file that keeps its addresses itself.
pub const BLOCKS: &[(u8, &str)] = &[
    (0, "127.0.x.y: the demo, examples/embedded.rs, servers bound to 127.0.0.1"),
    (1, "processes::a_mesh_of_processes_joins_resolves_and_survives_failures"),
    (2, "processes::wrong_keys_and_garbage_do_not_get_in"),
    (3, "processes::bad_config_exits_2_naming_the_field"),
    (4, "processes::registration_churn_leaves_no_tombstones_and_no_memory_behind"),
    (5, "processes::proxy_mode_with_certificates_from_the_cli"),
    (6, "processes::the_open_files_limit_is_raised_at_start_and_reported"),
    (7, "processes::the_cli_tells_scripts_what_happened_by_its_exit_status"),
    (10, "agents::three_agents_resolve_through_dns_and_api"),
    (11, "agents::dead_apps_and_dead_agents_leave_answers"),
    (12, "agents::graceful_leave_drains_then_leaves"),
    (13, "agents::a_restarted_agent_on_a_new_address_replaces_its_old_self"),
    (14, "agents::a_node_with_another_key_cannot_join_or_inject"),
    (15, "agents::garbage_at_every_port_is_counted_and_changes_nothing"),
    (16, "agents::udp_truncates_tcp_carries_and_other_names_are_forwarded"),
    (17, "agents::seeds_are_retried_until_one_answers_and_dead_nodes_are_forgotten"),
    (18, "agents::captured_gossip_reveals_nothing_and_replays_change_nothing"),
    (19, "agents::the_udp_stub_answers_malformed_and_unusual_queries_as_a_resolver_expects"),
    (20, "agents::a_flapping_check_is_held_critical_at_its_source"),
    (21, "agents::the_api_refuses_rebound_names_web_pages_and_changes_without_the_token"),
    (22, "agents::a_replayed_datagram_is_answered_at_most_once_and_never_amplified"),
    (23, "agents::a_dead_first_upstream_costs_its_timeout_once_not_on_every_query"),
    (24, "agents::registrations_past_the_caps_are_refused_and_replicas_do_not_grow"),
    (25, "consul::prometheus_http_sd_lists_every_healthy_instance"),
    (26, "consul::consul_registration_ttl_checks_and_deregister_after"),
    (27, "consul::consul_endpoints_answer_in_consuls_shape_and_block_per_service"),
    (28, "consul::vmagent_consul_sd_discovers_instances_and_follows_their_health"),
    (29, "consul::python_consul_reads_the_catalog_and_blocks_until_a_change"),
    (31, "proxy::killing_a_backend_app_or_agent_under_load_fails_nothing"),
    (32, "proxy::foreign_certificates_and_callers_outside_allow_are_refused"),
    (33, "proxy::foreign_certificates_and_callers_outside_allow_are_refused/second"),
    (34, "proxy::the_breaker_rejects_past_its_cap_and_drain_finishes_open_transfers"),
    (35, "proxy::udp_upstreams_ride_quic_datagrams_and_idle_flows_expire"),
    (36, "proxy::bad_headers_get_an_error_frame_and_a_counted_reason"),
    (37, "proxy::outlier_detection_ejects_what_health_checks_do_not_see"),
    (38, "proxy::a_member_whose_certificate_does_not_name_the_service_gets_none_of_its_traffic"),
    (39, "proxy::a_reset_behind_the_sidecars_reaches_the_app_as_a_reset"),
    (40, "proxy::a_key_holder_without_a_certificate_gets_none_of_a_services_traffic"),
    (41, "proxy::the_api_cannot_rewrite_or_shadow_a_configured_instance"),
    (42, "proxy::a_peer_holding_twenty_thousand_streams_cannot_lock_out_other_callers"),
    (43, "proxy::a_resolver_opening_a_flow_per_query_neither_runs_out_nor_locks_out_inbound_flows"),
    (44, "proxy::the_access_log_has_a_line_per_connection"),
    (45, "ui::the_dashboard_shows_the_cluster_live_in_a_real_browser"),
    (46, "agents::a_running_cluster_rotates_its_gossip_key_and_then_refuses_the_old_one"),
    (47, "tests/deploy.rs (the podman kube mesh)"),
    (49, "proxy::a_reloaded_certificate_is_presented_to_new_connections_and_bad_files_change_nothing"),
    (50, "proxy::traffic_reaches_both_instances_and_big_transfers_are_byte_exact"),
    (60, "benches/proxy_figures.rs"),
    (61, "benches/peers_support/proxy.rs"),
    (62, "benches/peers_support/dns.rs"),
    (63, "benches/peers_support/membership.rs (murmur)"),
    (64, "benches/peers_support/membership.rs (Serf)"),
    (65, "benches/blocking.rs"),
    (67, "benches/agent_figures.rs"),
    (68, "benches/flood.rs"),
    (69, "benches/conns.rs"),
    (90, "benches/scale_sim.rs (127.90.x.y and up, one /16 per 65,536 agents)"),
    (201, "proxy-mode VIP ranges of the proxy and dashboard tests (127.201.<block>.x)"),
    (202, "the second VIP range of a proxy test or a process test (127.202.<block>.x)"),
];

/// The block test `test` owns (its function name; `name/second` for a second one).
pub fn block(test: &str) -> u8 {
    let owned = BLOCKS.iter().filter(|(_, owner)| owner.split_once("::").is_some_and(|(_, t)| t == test));
    let blocks: Vec<u8> = owned.map(|(b, _)| *b).collect();
    match blocks.as_slice() {
        [one] => *one,
        [] => panic!("test {test} owns no address block: add it to tests/common/blocks.rs with a free one"),
        _ => panic!("test {test} owns blocks {blocks:?} in tests/common/blocks.rs: it must own one"),
    }
}

#[test]
fn no_block_has_two_owners_and_no_test_two_blocks() {
    for (i, (b, owner)) in BLOCKS.iter().enumerate() {
        assert!(BLOCKS[i + 1..].iter().all(|(other, _)| other != b), "block {b} has two owners, one is {owner}");
        if let Some((_, test)) = owner.split_once("::") {
            assert_eq!(block(test), *b);
        }
    }
}
