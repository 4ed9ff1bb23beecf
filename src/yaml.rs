//! YAML in and out, with the one YAML crate of the build (serde-saphyr, which kube already
//! uses for kubeconfig files). Scalars are read as Kubernetes reads them (YAML 1.1:
//! unquoted `yes` is a boolean), strings that a YAML 1.1 reader would take for something
//! else are written quoted, and errors are one line with the line and column.

use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use serde_saphyr::{Options, Spanned};

pub use serde_saphyr::{Error, SerializeError};

/// Reading options: errors without the source snippet, so they fit on one line of a
/// status message, a CLI report or an HTTP answer.
fn options() -> Options {
    serde_saphyr::options! { with_snippet: false }
}

/// One YAML document.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, Error> {
    serde_saphyr::from_str_with_options(text, options())
}

/// One YAML document from bytes (UTF-8, or UTF-16 with a byte-order mark).
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    serde_saphyr::from_slice_with_options(bytes, options())
}

/// Every document of a stream that holds something (empty ones are left out); the first
/// error fails the whole stream. [`documents`] numbers them and reads past data errors.
pub fn from_multiple<T: DeserializeOwned>(text: &str) -> Result<Vec<T>, Error> {
    let mut reader = text.as_bytes();
    serde_saphyr::read_with_options(&mut reader, options()).collect()
}

/// A value as one YAML document. Long strings stay on one line (a CEL rule or a
/// description is searched for as written); strings with line breaks are literal blocks.
pub fn to_string<T: Serialize>(value: &T) -> Result<String, SerializeError> {
    let options = serde_saphyr::ser_options! { folded_wrap_chars: usize::MAX };
    serde_saphyr::to_string_with_options(value, options)
}

/// One document of a stream: its number as it stands in the text (1-based, empty documents
/// counted, as `kubectl` and editors count them) and what it holds.
#[derive(Debug)]
pub struct Document {
    pub number: usize,
    pub value: Result<Value, Error>,
}

/// The documents of a multi-document stream that hold something (empty ones and ones of
/// only comments are left out, but counted). A document that cannot be read as data is
/// reported and the next one read; a syntax error ends the stream, as the parser cannot
/// find its place after one.
pub fn documents(text: &str) -> Vec<Document> {
    // Sorted lines: a binary search, so a stream of many documents stays linear.
    let starts = document_starts(text);
    let number_at = |line: u64| starts.partition_point(|&start| start <= line).max(1);
    let mut reader = text.as_bytes();
    let mut documents: Vec<Document> = Vec::new();
    for read in serde_saphyr::read_with_options::<_, Spanned<Value>>(&mut reader, options()) {
        let document = match read {
            Ok(spanned) => Document {
                number: number_at(spanned.defined.line()),
                value: Ok(spanned.value),
            },
            Err(error) => Document {
                number: error.location().map_or_else(
                    || documents.last().map_or(1, |d| d.number + 1),
                    |at| number_at(at.line()),
                ),
                value: Err(error),
            },
        };
        documents.push(document);
    }
    documents
}

/// The lines (1-based) on which the documents of a stream start: a `---` marker, or the
/// first content of a document without one (the first, or one after a `...` end marker).
fn document_starts(text: &str) -> Vec<u64> {
    let is_marker = |line: &str, marker: &str| {
        line.strip_prefix(marker)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
    };
    let mut starts = Vec::new();
    let mut open = false;
    for (line, number) in text.lines().zip(1u64..) {
        if is_marker(line, "---") {
            starts.push(number);
            open = true;
        } else if is_marker(line, "...") {
            open = false;
        } else if !open {
            let content = line.trim_start();
            if !(content.is_empty() || content.starts_with('#') || line.starts_with('%')) {
                starts.push(number);
                open = true;
            }
        }
    }
    starts
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn numbered(text: &str) -> Vec<(usize, Option<Value>)> {
        documents(text)
            .into_iter()
            .map(|d| (d.number, d.value.ok()))
            .collect()
    }

    #[test]
    fn documents_are_numbered_as_they_stand_in_the_text() {
        assert_eq!(
            numbered("a: 1\n---\nb: 2\n"),
            vec![(1, Some(json!({"a": 1}))), (2, Some(json!({"b": 2})))]
        );
        // A leading marker opens the first document; comments and empty documents count
        // only where they stand between markers.
        assert_eq!(
            numbered("# header\n---\na: 1\n---\n# nothing\n---\n\n  c: 3\n---\n"),
            vec![(1, Some(json!({"a": 1}))), (3, Some(json!({"c": 3})))]
        );
        // An end marker closes a document; the next content starts another.
        assert_eq!(
            numbered("%YAML 1.2\n---\na: 1\n...\nb: 2\n"),
            vec![(1, Some(json!({"a": 1}))), (2, Some(json!({"b": 2})))]
        );
        // A block scalar holding dashes is no marker: its lines are indented.
        assert_eq!(
            numbered("a: |\n  ---\n  x\n---\nb: 2\n"),
            vec![
                (1, Some(json!({"a": "---\nx\n"}))),
                (2, Some(json!({"b": 2})))
            ]
        );
    }

    #[test]
    fn a_long_stream_is_read_whole() {
        // The parser's limits hold per document when streaming (its whole-input readers
        // stop at 1,024 documents): `wecom-acq import` writes one per console link.
        let text: String = (0..3000).map(|i| format!("---\nname: l{i}\n")).collect();
        let read = documents(&text);
        assert_eq!(read.len(), 3000);
        assert_eq!(read[2999].number, 3000);
        assert_eq!(
            read[2999].value.as_ref().ok(),
            Some(&json!({"name": "l2999"}))
        );
        assert_eq!(
            from_multiple::<Value>(&text).map(|all| all.len()).ok(),
            Some(3000)
        );
    }

    #[test]
    fn a_syntax_error_names_its_document_and_line_and_ends_the_stream() {
        let read = documents("a: 1\n---\n---\nb: [1, 2\n---\nc: 3\n");
        assert_eq!(read.len(), 2, "{read:?}");
        assert_eq!(read[0].number, 1);
        assert_eq!(read[1].number, 3);
        let error = read[1].value.as_ref().unwrap_err().to_string();
        assert!(error.contains("line 4"), "{error}");
        assert!(!error.contains('\n'), "one line: {error}");
    }

    #[test]
    fn scalars_are_read_as_kubernetes_reads_them_and_written_so_they_read_back() {
        let read: Value = from_str("a: yes\nb: \"yes\"\nd: 1.5\ne: ~\n").unwrap();
        assert_eq!(read, json!({"a": true, "b": "yes", "d": 1.5, "e": null}));
        // Strings a YAML 1.1 reader (kubectl, ArgoCD) would take for a boolean, a number or
        // null are quoted.
        let tricky = json!([
            "yes",
            "on",
            "n",
            "Off",
            "~",
            "null",
            "1.0",
            "0x1F",
            "1:20",
            "012",
            "",
            "- a",
            "#x",
            "a: b",
            "multi\nline"
        ]);
        let text = to_string(&tricky).unwrap();
        for word in [
            "yes", "on", "n", "Off", "~", "null", "1.0", "0x1F", "1:20", "012",
        ] {
            assert!(
                text.contains(&format!("- \"{word}\"")),
                "{word} unquoted in:\n{text}"
            );
        }
        assert_eq!(from_str::<Value>(&text).ok(), Some(tricky));
    }
}
