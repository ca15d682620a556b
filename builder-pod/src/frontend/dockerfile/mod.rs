//! The Dockerfile frontend: text to AST (`parser`), AST to typed
//! instructions and stages (`instructions`), BuildKit's shell-word lexer for
//! variable expansion (`shell`), the build checks (`linter`), and conversion
//! to LLB plus the image config (`convert`: stages, resolve, dispatch,
//! config). `builder` runs it for a Solve. Only `convert` looks anything up,
//! through the resolver it is given; the rest is pure.
//!
//! Behaviour and error texts follow moby/buildkit v0.29
//! `frontend/dockerfile/{parser,shell,instructions,linter}` (docs/protocol.md §8),
//! including its quirks, so that a Dockerfile fails or warns under kilnd exactly
//! where it would under buildkitd.

pub(crate) mod builder;
pub(crate) mod convert;
pub(crate) mod instructions;
mod json;
pub(crate) mod linter;
pub(crate) mod parser;
pub(crate) mod shell;

/// BuildKit's `util/suggest.Search`: the closest option within edit distance
/// 2, or nothing when `value` is itself an option. Ties go to the earlier
/// option (upstream iterates a map, so its tie-break is random).
pub(crate) fn suggest(value: &str, options: &[&str], case_sensitive: bool) -> Option<String> {
    let folded = if case_sensitive { value.to_owned() } else { value.to_lowercase() };
    let mut best: Option<String> = None;
    let mut min = 3;
    for option in options {
        let option = if case_sensitive { (*option).to_owned() } else { option.to_lowercase() };
        if folded == option {
            return None;
        }
        let distance = levenshtein(&folded, &option);
        if distance < min {
            min = distance;
            best = Some(if case_sensitive { option } else { match_case(&option, value) });
        }
    }
    best
}

fn match_case(option: &str, original: &str) -> String {
    if original == original.to_lowercase() {
        option.to_lowercase()
    } else if original == original.to_uppercase() {
        option.to_uppercase()
    } else {
        option.to_owned()
    }
}

/// Edit distance over characters with unit costs, as `agext/levenshtein` computes it by default.
fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        // Mixed case input gets the lower-cased option, as upstream's matchCase does.
        assert_eq!(suggest("RUm", &["RUN", "ARG"], false).as_deref(), Some("run"));
        assert_eq!(suggest("RUM", &["RUN", "ARG"], false).as_deref(), Some("RUN"));
        assert_eq!(suggest("rnu", &["RUN", "ARG"], false).as_deref(), Some("run"));
        assert_eq!(suggest("RUN", &["RUN", "ARG"], false), None);
        assert_eq!(suggest("xyzzy", &["RUN", "ARG"], false), None);
        assert_eq!(suggest("chmode", &["chown", "chmod"], true).as_deref(), Some("chmod"));
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("", "abc"), 3);
    }

    /// xorshift64: deterministic inputs without extra crates.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    const VOCABULARY: &[&str] = &[
        "FROM ",
        "RUN ",
        "COPY ",
        "ADD ",
        "ENV ",
        "LABEL ",
        "ARG ",
        "ONBUILD ",
        "HEALTHCHECK ",
        "CMD ",
        "SHELL ",
        "EXPOSE ",
        "VOLUME ",
        "USER ",
        "WORKDIR ",
        "STOPSIGNAL ",
        "MAINTAINER ",
        "ENTRYPOINT ",
        "AS ",
        "NONE ",
        "--mount=",
        "type=cache,target=/x",
        "type=secret,id=a",
        "type=tmpfs,size=",
        "--from=",
        "--interval=",
        "--retries=",
        "--network=",
        "--device=",
        "--",
        "-",
        "=",
        ",",
        "\"",
        "'",
        "\\",
        "`",
        "$",
        "${",
        "}",
        ":-",
        "#",
        "%",
        "/",
        "*",
        "?",
        "[",
        "]",
        "{",
        ":",
        "<<",
        "<<-",
        "EOF",
        "\n",
        "\r\n",
        " ",
        "\t",
        "a",
        "1",
        "é",
        "\u{a0}",
        "\u{85}",
        "\u{feff}",
        "# escape=`\n",
        "# syntax=x\n",
        "#!/bin/sh\n",
        "\\\n",
        "`\n",
    ];

    /// Whatever the input, parsing and lexing return a value or an error;
    /// they never panic.
    #[test]
    fn arbitrary_input_never_panics() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut inputs = Vec::new();
        for _ in 0..2000 {
            let bytes: Vec<u8> = (0..rng.below(200)).map(|_| rng.next() as u8).collect();
            inputs.push(String::from_utf8_lossy(&bytes).into_owned());
        }
        for _ in 0..3000 {
            let text: String = (0..rng.below(40)).map(|_| VOCABULARY[rng.below(VOCABULARY.len())]).collect();
            inputs.push(text);
        }
        let env = vec![("a".to_owned(), "x y".to_owned()), ("EOF".to_owned(), String::new())];
        let check = linter::CheckConfig { experimental_all: true, ..linter::CheckConfig::default() };
        for input in &inputs {
            let _ = parser::detect_syntax(input);
            let _ = parser::parse_directive("check", input);
            let _ = parser::parse_heredoc(input);
            let _ = instructions::parse_mount(input, None);
            for escape in ['\\', '`'] {
                let mut lexer = shell::Lexer::new(escape);
                for (raw_quotes, skip_unset) in [(false, false), (true, true)] {
                    lexer.raw_quotes = raw_quotes;
                    lexer.raw_escapes = raw_quotes;
                    lexer.skip_unset_env = skip_unset;
                    let _ = lexer.process_word_with_matches(input, &env);
                    let _ = lexer.process_words(input, &env);
                }
            }
            let Ok(ast) = parser::parse(input) else { continue };
            for node in &ast.nodes {
                let _ = node.dump();
                let _ = instructions::parse_command(node);
            }
            let Ok(parsed) = instructions::parse_stages_with_checks(&ast, &check) else { continue };
            for command in parsed.stages.iter().flat_map(|s| &s.commands) {
                if let instructions::Instruction::Run(run) = &command.instruction {
                    let lexer = shell::Lexer::new(ast.escape_token);
                    let _ = run.mounts(&mut |w| lexer.process_word(w, &env));
                }
            }
        }
    }
}
