//! Every length the protocol accepts, in one place. Decoders check these before they
//! allocate, so a hostile peer cannot make an agent reserve more than this.

/// Longest DNS label, and so the longest service, tag, instance or node name (RFC 1035).
pub const MAX_LABEL_LEN: usize = 63;
/// Tags one instance may carry.
pub const MAX_TAGS: usize = 32;
/// Attributes one instance may carry.
pub const MAX_ATTRIBUTES: usize = 32;
/// Longest attribute key, in bytes.
pub const MAX_ATTR_KEY_LEN: usize = 64;
/// Longest attribute value, in bytes.
pub const MAX_ATTR_VALUE_LEN: usize = 256;
/// Longest health-check output kept in gossip, in bytes; longer output is cut on a
/// character boundary by the writer.
pub const MAX_HEALTH_OUTPUT_LEN: usize = 256;
/// Longest zone name, in bytes.
pub const MAX_ZONE_LEN: usize = 64;
/// Longest agent version string, in bytes.
pub const MAX_AGENT_VERSION_LEN: usize = 32;
/// Largest encoded record (bincode bytes) a decoder accepts. The largest legal instance
/// record (32 tags, 32 attributes of maximal size) fits well under this.
pub const MAX_RECORD_LEN: usize = 16 * 1024;
/// Largest gossip value (base64 text) a decoder looks at.
pub const MAX_VALUE_LEN: usize = MAX_RECORD_LEN * 4 / 3 + 4;
/// Most keys a gossip keyring holds: the primary and the ones still accepted.
pub const MAX_KEYRING_KEYS: usize = 8;
