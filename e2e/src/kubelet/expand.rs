//! `$(VAR)` references in a container's command, args and env values, expanded
//! as the kubelet expands them (k8s.io/kubernetes
//! `third_party/forked/golang/expansion`): a known name is replaced, an
//! unknown one stays as written, `$$` is a literal `$`, any other `$` is kept.

/// Expands every `$(NAME)` in `input` that `lookup` knows.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let Some(next) = after.chars().next() else {
            // A trailing `$` is text.
            out.push('$');
            rest = after;
            break;
        };
        match next {
            '$' => {
                out.push('$');
                rest = &after[1..];
            }
            '(' => match after.find(')') {
                Some(close) => {
                    let name = &after[1..close];
                    match lookup(name) {
                        Some(value) => out.push_str(&value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &after[close + 1..];
                }
                // An unclosed `$(` is text; what follows it is still scanned.
                None => {
                    out.push_str("$(");
                    rest = &after[1..];
                }
            },
            other => {
                out.push('$');
                out.push(other);
                rest = &after[other.len_utf8()..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "POD_IP" => Some("127.0.0.10".into()),
            "EMPTY" => Some(String::new()),
            "NESTED" => Some("$(POD_IP)".into()),
            _ => None,
        }
    }

    #[test]
    fn known_names_are_replaced() {
        assert_eq!(expand("tcp://$(POD_IP):1234", env), "tcp://127.0.0.10:1234");
        assert_eq!(expand("$(POD_IP)$(POD_IP)", env), "127.0.0.10127.0.0.10");
        assert_eq!(expand("a$(EMPTY)b", env), "ab");
    }

    #[test]
    fn unknown_names_stay_as_written() {
        assert_eq!(expand("$(NOPE) and $(POD_IP)", env), "$(NOPE) and 127.0.0.10");
        assert_eq!(expand("$()", env), "$()");
    }

    #[test]
    fn a_value_is_not_expanded_again() {
        assert_eq!(expand("$(NESTED)", env), "$(POD_IP)");
    }

    #[test]
    fn double_dollar_escapes() {
        assert_eq!(expand("$$(POD_IP)", env), "$(POD_IP)");
        assert_eq!(expand("cost: $$5", env), "cost: $5");
        assert_eq!(expand("$$$(POD_IP)", env), "$127.0.0.10");
    }

    #[test]
    fn other_dollars_and_unclosed_references_are_text() {
        assert_eq!(expand("$HOME $1 end$", env), "$HOME $1 end$");
        assert_eq!(expand("$(POD_IP", env), "$(POD_IP");
        assert_eq!(expand("$( $(POD_IP)", env), "$( $(POD_IP)");
        assert_eq!(expand("$é", env), "$é");
    }
}
