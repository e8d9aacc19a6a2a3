//! Output for a terminal: everything the commands print fits [`WIDTH`] columns. Tables wrap
//! their cells; prose wraps at word boundaries, keeping its indentation. The full detail
//! stays in each command's `--json`.

use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};

/// The widest line the commands print.
pub const WIDTH: usize = 100;

/// A table with `header` that wraps its cells to fit [`WIDTH`].
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_width(WIDTH as u16)
        .set_header(header.to_vec());
    t
}

/// `text` with every line longer than [`WIDTH`] wrapped at word boundaries; continuation
/// lines keep the line's indentation plus two spaces. Table lines are already narrow enough.
pub fn fit(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (body, end) = match line.strip_suffix('\n') {
            Some(body) => (body, "\n"),
            None => (line, ""),
        };
        if textwrap::core::display_width(body) <= WIDTH {
            out.push_str(line);
            continue;
        }
        let indent = &body[..body.len() - body.trim_start().len()];
        let more = format!("{indent}  ");
        let options = textwrap::Options::new(WIDTH)
            .initial_indent(indent)
            .subsequent_indent(&more)
            .break_words(true);
        out.push_str(&textwrap::fill(body.trim_start(), options));
        out.push_str(end);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn widest(text: &str) -> usize {
        text.lines()
            .map(textwrap::core::display_width)
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn long_lines_wrap_with_their_indentation_and_lose_no_word() {
        let words: Vec<String> = (0..60).map(|i| format!("word{i}")).collect();
        let long = format!("   {}", words.join(" "));
        let text = format!("short\n{long}\nlast");
        let fitted = fit(&text);
        assert!(widest(&fitted) <= WIDTH, "{fitted}");
        let lines: Vec<&str> = fitted.lines().collect();
        assert_eq!(lines.first(), Some(&"short"));
        assert_eq!(lines.last(), Some(&"last"));
        assert!(lines[1].starts_with("   word0 "));
        assert!(
            lines[2..lines.len() - 1]
                .iter()
                .all(|l| l.starts_with("     "))
        );
        let rejoined: Vec<&str> = fitted.split_whitespace().collect();
        let original: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(rejoined, original);
    }

    #[test]
    fn a_word_longer_than_a_line_is_broken_rather_than_overflowing() {
        let fitted = fit(&"x".repeat(250));
        assert!(widest(&fitted) <= WIDTH, "{fitted}");
        assert_eq!(fitted.chars().filter(|c| *c == 'x').count(), 250);
    }

    #[test]
    fn tables_wrap_their_cells_to_the_width() {
        let mut t = table(&["name", "details"]);
        t.add_row(vec!["a".to_owned(), "detail ".repeat(40)]);
        t.add_row(vec!["b".repeat(30), "x".repeat(150)]);
        let rendered = t.to_string();
        assert!(widest(&rendered) <= WIDTH, "{rendered}");
        assert!(rendered.contains("bbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"));
    }
}
