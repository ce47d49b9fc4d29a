//! `$(VAR)` references in command, args and env values, expanded as Kubernetes does:
//! `$$` is a literal `$`, `$(NAME)` of a defined variable is its value, anything else
//! (an undefined name, an unclosed `$(`) stays as written.

pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let b = input.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            match b[i + 1] {
                b'$' => {
                    out.push('$');
                    i += 2;
                    continue;
                }
                b'(' => {
                    if let Some(end) = input[i + 2..].find(')') {
                        let name = &input[i + 2..i + 2 + end];
                        match lookup(name) {
                            Some(v) => out.push_str(&v),
                            None => out.push_str(&input[i..i + 3 + end]),
                        }
                        i += 3 + end;
                        continue;
                    }
                }
                _ => {}
            }
        }
        let ch = input[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::expand;

    fn env(name: &str) -> Option<String> {
        match name {
            "A" => Some("x".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn kubernetes_rules() {
        assert_eq!(expand("$(A)-$(A)", env), "x-x");
        assert_eq!(expand("$$(A)", env), "$(A)");
        assert_eq!(expand("$(B)", env), "$(B)");
        assert_eq!(expand("$(EMPTY)z", env), "z");
        assert_eq!(expand("$(A", env), "$(A");
        assert_eq!(expand("a$b$", env), "a$b$");
        assert_eq!(expand("é$(A)ü", env), "éxü");
    }
}
