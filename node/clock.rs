//! Wall-clock time as it crosses the wire: unix milliseconds. The one place the agent
//! reads the wall clock; pure code takes the value as an argument.

/// Milliseconds since the unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
