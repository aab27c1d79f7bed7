//! The bulk import file: a header `id,kind[,name][,location]` (any order), then one
//! device per line. Fields may be quoted (`"a, b"`, `""` for a quote) so a name can hold
//! a comma; a quoted field does not span lines.

use anyhow::{Context, bail};
use lentera_auth::Kind;
use lentera_auth::admin::NewDevice;

/// The devices of `text`, each with its line number (from 1) for error messages.
pub fn parse(text: &str) -> anyhow::Result<Vec<(usize, NewDevice)>> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
        .filter(|(_, l)| !l.trim().is_empty());
    let (hline, header) = lines
        .next()
        .context("the CSV is empty (expected a header `id,kind,name,location`)")?;
    let columns = fields(header).with_context(|| format!("line {hline}"))?;
    let col = |name: &str| columns.iter().position(|c| c.trim() == name);
    for c in &columns {
        if !["id", "kind", "name", "location"].contains(&c.trim()) {
            bail!("line {hline}: unknown column {c:?} (expected id,kind,name,location)");
        }
    }
    let (Some(id), Some(kind)) = (col("id"), col("kind")) else {
        bail!("line {hline}: the header needs the columns id and kind");
    };
    let (name, location) = (col("name"), col("location"));
    let mut out = Vec::new();
    for (n, line) in lines {
        let f = fields(line).with_context(|| format!("line {n}"))?;
        if f.len() != columns.len() {
            bail!(
                "line {n}: {} fields, the header has {}",
                f.len(),
                columns.len()
            );
        }
        let opt = |i: Option<usize>| i.map(|i| f[i].trim().to_owned()).filter(|s| !s.is_empty());
        let kind: Kind = f[kind]
            .trim()
            .parse()
            .with_context(|| format!("line {n}"))?;
        out.push((
            n,
            NewDevice {
                id: f[id].trim().to_owned(),
                kind,
                name: opt(name),
                location: opt(location),
            },
        ));
    }
    Ok(out)
}

fn fields(line: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cur.push(c),
            (false, '"') if cur.trim().is_empty() && !was_quoted => {
                cur.clear();
                quoted = true;
                was_quoted = true;
            }
            (false, ',') => {
                out.push(std::mem::take(&mut cur));
                was_quoted = false;
            }
            (false, '"') => bail!("a quote inside an unquoted field"),
            (false, c) => cur.push(c),
        }
    }
    if quoted {
        bail!("an unterminated quote");
    }
    out.push(cur);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_order_quotes_and_optional_columns() {
        let d = parse("kind,id,name\n\nlamp,l-1,\"Lamp, north\"\r\ngreenhouse,gh-1,\n").unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].0, 3);
        assert_eq!(d[0].1.id, "l-1");
        assert_eq!(d[0].1.name.as_deref(), Some("Lamp, north"));
        assert_eq!(d[1].1.kind, Kind::Greenhouse);
        assert_eq!(d[1].1.name, None);
        assert_eq!(
            fields("a,\"b \"\"c\"\"\",d").unwrap(),
            ["a", "b \"c\"", "d"]
        );
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse("id,kind\ngh-1,greenhouse\ngh-2,tractor\n").unwrap_err();
        assert!(format!("{e:#}").starts_with("line 3"), "{e:#}");
        let e = parse("id,kind\ngh-1\n").unwrap_err();
        assert!(format!("{e:#}").starts_with("line 2"), "{e:#}");
        assert!(parse("id,colour\n").is_err());
        assert!(parse("").is_err());
        assert!(parse("id,kind\n\"x,lamp\n").is_err());
    }
}
