//! Plain-text tables for people: columns padded to their widest cell.

/// A table with a header row.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

/// `cell` with every control character written as its escape (`\u{1b}`).
fn printable(cell: String) -> String {
    if !cell.chars().any(char::is_control) {
        return cell;
    }
    cell.chars().map(|c| if c.is_control() { c.escape_unicode().to_string() } else { c.to_string() }).collect()
}

impl Table {
    /// A table with these column names.
    pub fn new(header: &[&str]) -> Self {
        Self { header: header.iter().map(|h| h.to_string()).collect(), rows: Vec::new() }
    }

    /// Adds a row (missing cells print empty). Control characters are shown escaped: a
    /// cell comes from the cluster (a member's zone, a tag), and a member must not be
    /// able to move the cursor or recolour the operator's terminal.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.into_iter().map(printable).collect());
    }

    /// The table as text, one line per row (header included).
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(widths.len()) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let line: Vec<String> = (0..widths.len())
                .map(|i| {
                    let cell = row.get(i).map(String::as_str).unwrap_or("");
                    format!("{cell:<width$}", width = widths[i])
                })
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_from_the_cluster_are_shown_escaped() {
        let mut t = Table::new(&["NAME", "ZONE"]);
        t.row(vec!["m1".into(), "eu\u{1b}[2J\u{1b}]0;owned\u{7}\nfake-row".into()]);
        let text = t.render();
        assert!(!text.contains('\u{1b}') && !text.contains('\u{7}'), "{text:?}");
        assert_eq!(text.lines().count(), 2, "no row injected: {text:?}");
        assert!(text.contains("eu\\u{1b}[2J"), "{text:?}");
    }

    #[test]
    fn columns_line_up() {
        let mut t = Table::new(&["A", "BB"]);
        t.row(vec!["long".into(), "x".into()]);
        t.row(vec!["y".into()]);
        assert_eq!(t.render(), "A     BB\nlong  x\ny\n");
    }
}
