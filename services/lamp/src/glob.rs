//! The lamp pattern: a glob where `*` matches any run of characters (including none) and
//! every other character matches itself. Device ids cannot contain `*`, so no escaping.

/// True when `text` matches `pattern`.
pub fn matches(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was and how much text it has swallowed so far, for backtracking.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            // Let the last `*` swallow one more character and retry from there.
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::matches;
    use proptest::prelude::*;

    #[test]
    fn default_pattern_matches_lamps_only() {
        assert!(matches("lamp*", "lamp"));
        assert!(matches("lamp*", "lamp-3"));
        assert!(matches("lamp*", "lampu_teras"));
        assert!(!matches("lamp*", "gh-1"));
        assert!(!matches("lamp*", "streetlamp-1"));
        assert!(!matches("lamp*", "Lamp-1"), "case matters, like device ids");
    }

    #[test]
    fn stars_anywhere() {
        assert!(matches("*lamp*", "streetlamp-1"));
        assert!(matches("*-lamp", "porch-lamp"));
        assert!(!matches("*-lamp", "porch-lamp-2"));
        assert!(matches("a*b*c", "aXXbYYc"));
        assert!(matches("a*b*c", "abc"));
        assert!(!matches("a*b*c", "acb"));
        assert!(matches("*", ""));
        assert!(matches("**", "anything"));
        assert!(!matches("", "x"));
        assert!(matches("", ""));
    }

    proptest! {
        #[test]
        fn a_literal_matches_only_itself(a in "[a-z0-9_-]{0,12}", b in "[a-z0-9_-]{0,12}") {
            prop_assert_eq!(matches(&a, &b), a == b);
        }

        #[test]
        fn prefix_star_is_starts_with(p in "[a-z]{0,4}", t in "[a-z]{0,8}") {
            prop_assert_eq!(matches(&format!("{p}*"), &t), t.starts_with(&p));
        }

        #[test]
        fn star_surrounded_is_contains(p in "[a-c]{0,3}", t in "[a-c]{0,8}") {
            prop_assert_eq!(matches(&format!("*{p}*"), &t), t.contains(&p));
        }
    }
}
