//! Which named parts of the inputs a conversion keeps: `all`, `none`, or `NAME,NAME,...` (the
//! obs columns of `--obs`, the obsm keys of `--obsm`). One parser, so that both options accept
//! and refuse the same things with the same kind of message.

use std::fmt;

/// `all`, `none`, or these names in this order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Selection {
    #[default]
    All,
    None,
    Names(Vec<String>),
}

impl Selection {
    /// Parses `s`, the value of command-line option `option`, whose names are `NAME`s: each
    /// name non-empty, not `.` or `..` (names may become file names), and given once.
    pub fn parse(s: &str, option: &str, name: &str) -> Result<Selection, String> {
        match s {
            "all" => Ok(Selection::All),
            "none" => Ok(Selection::None),
            _ => {
                let names: Vec<String> = s.split(',').map(str::to_string).collect();
                let repeated = names
                    .iter()
                    .enumerate()
                    .any(|(i, n)| names[..i].contains(n));
                let bad = names.iter().any(|n| n.is_empty() || n == "." || n == "..");
                if repeated || bad {
                    return Err(format!(
                        "bad {option} '{s}': expected all, none or {name},{name},... \
                         (each once, none empty)"
                    ));
                }
                Ok(Selection::Names(names))
            }
        }
    }
}

impl fmt::Display for Selection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selection::All => f.write_str("all"),
            Selection::None => f.write_str("none"),
            Selection::Names(n) => f.write_str(&n.join(",")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_print_back() {
        for s in ["all", "none", "X_pca", "X_pca,spatial"] {
            assert_eq!(Selection::parse(s, "--obsm", "KEY").unwrap().to_string(), s);
        }
        assert_eq!(
            Selection::parse("b,a", "--obs", "COL").unwrap(),
            Selection::Names(vec!["b".into(), "a".into()])
        );
        for bad in ["", "a,,b", "a,a", "..", "a,."] {
            let e = Selection::parse(bad, "--obs", "COL").unwrap_err();
            assert!(
                e.starts_with(&format!("bad --obs '{bad}': expected all, none or COL")),
                "{e}"
            );
        }
    }
}
