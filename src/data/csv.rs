//! A small RFC 4180 reader: comma-separated fields, records ended by LF or CRLF, fields in double
//! quotes may hold commas, newlines and doubled quotes (`""`). No header handling: the caller
//! knows what the columns are.

use std::path::Path;

use crate::{Error, Result};

/// One record and the line it starts on (1-based).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Record {
    /// Line of the file where the record starts.
    pub line: usize,
    /// The fields, unquoted.
    pub fields: Vec<String>,
}

/// The records of `text` (the contents of `path`, named in errors). Blank lines between records
/// are skipped.
pub(crate) fn records(path: &Path, text: &str) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while chars.peek().is_some() {
        let start = line;
        let mut fields = Vec::new();
        let mut field = String::new();
        loop {
            match chars.next() {
                None => {
                    fields.push(std::mem::take(&mut field));
                    break;
                }
                Some('"') if field.is_empty() => {
                    // Quoted field: up to the closing quote, `""` standing for one quote.
                    loop {
                        match chars.next() {
                            None => {
                                return Err(Error::format(
                                    path,
                                    format!("record starting on line {start}"),
                                    "a closing double quote",
                                    "the end of the file",
                                ))
                            }
                            Some('"') if chars.peek() == Some(&'"') => {
                                chars.next();
                                field.push('"');
                            }
                            Some('"') => break,
                            Some(c) => {
                                line += usize::from(c == '\n');
                                field.push(c);
                            }
                        }
                    }
                    match chars.peek() {
                        None | Some(',') | Some('\n') | Some('\r') => {}
                        Some(&c) => {
                            return Err(Error::format(
                                path,
                                format!("line {line}"),
                                "a comma or the end of the line after a closing quote",
                                format!("{c:?}"),
                            ))
                        }
                    }
                }
                Some(',') => fields.push(std::mem::take(&mut field)),
                Some('\r') if chars.peek() == Some(&'\n') => {}
                Some('\n') => {
                    line += 1;
                    fields.push(std::mem::take(&mut field));
                    break;
                }
                Some(c) => field.push(c),
            }
        }
        if !(fields.len() == 1 && fields[0].is_empty()) {
            out.push(Record {
                line: start,
                fields,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Record>> {
        records(Path::new("t.csv"), text)
    }

    #[test]
    fn quoted_fields_hold_commas_quotes_and_newlines() {
        let r = parse("a,\"b, c\",\"say \"\"hi\"\"\"\r\n\"two\nlines\",,x\n\nlast").unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].fields, ["a", "b, c", "say \"hi\""]);
        assert_eq!(
            (r[1].line, r[1].fields.clone()),
            (2, vec!["two\nlines".into(), String::new(), "x".into()])
        );
        assert_eq!(
            (r[2].line, r[2].fields.clone()),
            (5, vec!["last".to_string()])
        );
    }

    #[test]
    fn an_unclosed_quote_names_the_record() {
        let e = parse("a,b\n\"open,c\n").unwrap_err().to_string();
        assert!(
            e.contains("t.csv") && e.contains("line 2") && e.contains("closing"),
            "{e}"
        );
    }
}
