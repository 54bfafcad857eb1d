//! Draws the plots of a `benches/peers.sh` run:
//! `murmur-bench-plot RESULTS.json OUT_DIR FONT.ttf` writes `proxy.png`, `dns.png` and
//! `membership.png` (each only when the run has that part).

use std::error::Error;
use std::path::Path;

use plotters::prelude::*;
use serde_json::Value;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const MURMUR: RGBColor = RGBColor(31, 119, 180);
const PEERS: [RGBColor; 4] =
    [RGBColor(255, 127, 14), RGBColor(44, 160, 44), RGBColor(148, 103, 189), RGBColor(140, 140, 140)];
const FONT: &str = "sans-serif";

fn color(name: &str, i: usize) -> RGBColor {
    if name.starts_with("murmur") {
        MURMUR
    } else {
        PEERS[i % PEERS.len()]
    }
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// Fills `root` white, writes `title` across its top and returns the area below.
fn page<'a>(root: &Area<'a>, title: &str) -> Result<Area<'a>> {
    root.fill(&WHITE)?;
    let (top, body) = root.split_vertically(40);
    top.draw(&Text::new(title.to_owned(), (10, 10), (FONT, 22)))?;
    Ok(body)
}

/// One bar chart: a bar per target, its value written above it.
fn bars(area: &Area, title: &str, bars: &[(String, f64)]) -> Result<()> {
    let top = bars.iter().map(|b| b.1).filter(|v| v.is_finite()).fold(0.0, f64::max).max(1e-9) * 1.2;
    let n = bars.len() as u32;
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 18))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(56)
        .build_cartesian_2d((0u32..n).into_segmented(), 0f64..top)?;
    let names: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&|x: &SegmentValue<u32>| match x {
            SegmentValue::CenterOf(i) => names.get(*i as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .label_style((FONT, 12))
        .draw()?;
    for (i, (name, value)) in bars.iter().enumerate() {
        if !value.is_finite() {
            continue;
        }
        let i = i as u32;
        let style = color(name, i as usize).filled();
        let mut bar = Rectangle::new([(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), *value)], style);
        bar.set_margin(0, 0, 12, 12);
        chart.draw_series(std::iter::once(bar))?;
        let text = if *value >= 100.0 { format!("{value:.0}") } else { format!("{value:.2}") };
        chart.draw_series(std::iter::once(Text::new(
            text,
            (SegmentValue::CenterOf(i), *value + top * 0.02),
            (FONT, 13),
        )))?;
    }
    Ok(())
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn proxy(json: &Value, out: &Path) -> Result<()> {
    let targets = ["direct", "murmur", "haproxy", "haproxy-tls"];
    let labels = ["direct", "murmur", "HAProxy", "HAProxy mTLS"];
    let file = out.join("proxy.png");
    let root = BitMapBackend::new(&file, (1500, 820)).into_drawing_area();
    let body = page(&root, "Proxy path: client → proxy → proxy → nginx (medians, one run)")?;
    let panels = body.split_evenly((2, 3));
    let charts = [
        ("1 connection: p50 latency, µs (lower is better)", "rr_c1", "p50_us"),
        ("1 connection: p99 latency, µs", "rr_c1", "p99_us"),
        ("64 connections: requests/s (higher is better)", "rr_c64", "rps"),
        ("64 connections: p99 latency, µs", "rr_c64", "p99_us"),
        ("new connection per request: connections/s", "new_conn_c64", "rps"),
        ("bulk, one connection (iperf3): Gbit/s", "bulk", "gbit_s"),
    ];
    for (panel, (caption, test, field)) in panels.iter().zip(charts) {
        let data: Vec<(String, f64)> =
            targets.iter().zip(labels).map(|(t, l)| (l.to_owned(), f(&json[test][t]["median"][field]))).collect();
        bars(panel, caption, &data)?;
    }
    root.present()?;
    Ok(())
}

fn dns(json: &Value, out: &Path) -> Result<()> {
    let servers = ["murmur", "dnsmasq", "unbound"];
    let file = out.join("dns.png");
    let root = BitMapBackend::new(&file, (2000, 430)).into_drawing_area();
    let body = page(&root, "DNS: 77 A names, 8 SRV names, 15 misses (dnsperf; medians, one run)")?;
    let panels = body.split_evenly((1, 4));
    let charts = [
        ("queries/s, saturated (higher is better)", "qps"),
        ("server CPU µs per query, saturated", "cpu_us_per_query"),
        ("p99 µs at 1k queries/s", "p99_us_at_1000"),
        ("p99 µs at 20k queries/s", "p99_us_at_20000"),
    ];
    for (panel, (caption, field)) in panels.iter().zip(charts) {
        let data: Vec<(String, f64)> = servers.iter().map(|s| (s.to_string(), f(&json[s]["median"][field]))).collect();
        bars(panel, caption, &data)?;
    }
    root.present()?;
    Ok(())
}

fn membership(json: &Value, out: &Path) -> Result<()> {
    let runs = json["runs"].as_array().cloned().unwrap_or_default();
    let file = out.join("membership.png");
    let root = BitMapBackend::new(&file, (1500, 820)).into_drawing_area();
    let body = page(&root, "Membership: murmur and Serf, N agents on loopback (one run)")?;
    let panels = body.split_evenly((2, 2));
    let charts = [
        ("kill -9 until every other agent drops it, ms", "/kill9_detect_ms/all"),
        ("convergence after start, ms", "/converge_ms"),
        ("gossip bytes on the wire per agent per s", "/wire_bytes_per_s_per_agent"),
        ("RSS per agent, MB", "/rss_mb_per_agent"),
    ];
    let max_n = runs.iter().filter_map(|r| r["agents"].as_u64()).max().unwrap_or(10) as u32;
    for (panel, (caption, pointer)) in panels.iter().zip(charts) {
        let series: Vec<(&str, RGBColor, Vec<(u32, f64)>)> = [("murmur", MURMUR), ("serf", PEERS[0])]
            .into_iter()
            .map(|(tool, c)| {
                let points = runs
                    .iter()
                    .filter_map(|r| Some((r["agents"].as_u64()? as u32, r[tool].pointer(pointer)?.as_f64()?)))
                    .collect();
                (tool, c, points)
            })
            .collect();
        let top = series.iter().flat_map(|s| s.2.iter().map(|p| p.1)).fold(0.0, f64::max).max(1e-9) * 1.15;
        let mut chart = ChartBuilder::on(panel)
            .caption(caption, (FONT, 18))
            .margin(10)
            .x_label_area_size(32)
            .y_label_area_size(64)
            .build_cartesian_2d(0u32..max_n + max_n / 10, 0f64..top)?;
        chart.configure_mesh().x_desc("agents").label_style((FONT, 12)).draw()?;
        for (tool, c, points) in series {
            chart
                .draw_series(LineSeries::new(points.clone(), c.stroke_width(3)))?
                .label(if tool == "serf" { "Serf" } else { "murmur" })
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
            chart.draw_series(points.iter().map(|p| Circle::new(*p, 4, c.filled())))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font((FONT, 13))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, results, out, font] = args.as_slice() else {
        return Err("usage: murmur-bench-plot RESULTS.json OUT_DIR FONT.ttf".into());
    };
    let font_bytes: &'static [u8] =
        Box::leak(std::fs::read(font).map_err(|e| format!("font {font}: {e}"))?.into_boxed_slice());
    plotters::style::register_font(FONT, FontStyle::Normal, font_bytes)
        .map_err(|_| format!("{font} is not a usable TTF font"))?;
    let json: Value = serde_json::from_str(&std::fs::read_to_string(results).map_err(|e| format!("{results}: {e}"))?)?;
    let out = Path::new(out);
    std::fs::create_dir_all(out)?;
    if json.get("proxy").is_some() {
        proxy(&json["proxy"], out)?;
    }
    if json.get("dns").is_some() {
        dns(&json["dns"], out)?;
    }
    if json.get("membership").is_some() {
        membership(&json["membership"], out)?;
    }
    println!("plots written to {}", out.display());
    Ok(())
}
