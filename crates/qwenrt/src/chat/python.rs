//! The Jinja environment transformers renders templates in: Python's `str()`, `json.dumps`,
//! string and dict methods.

use super::*;

/// Steps (template instructions) one rendering may take: the published templates take a few
/// thousand per message, so this allows conversations far longer than any context, and stops a
/// template that loops for ever or nests huge ranges.
pub(super) const TEMPLATE_FUEL: u64 = 50_000_000;

/// Most spaces of a `tojson` indent: a larger one is a hostile template.
const MAX_INDENT: usize = 1024;

pub(super) fn build_environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_syntax(
        SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .expect("the default delimiters are valid"),
    );
    // minijinja picks auto-escaping from the template name; transformers' sandbox never escapes.
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_formatter(|out, _state, value| {
        match value.as_str() {
            Some(s) => out.write_str(s)?,
            None => out.write_str(&py::str_of(value))?,
        }
        Ok(())
    });
    env.set_unknown_method_callback(py::method);
    env.add_filter("tojson", tojson_filter);
    env.add_filter("string", |value: &Value| -> Value {
        match value.kind() {
            ValueKind::String => value.clone(),
            _ => Value::from(py::str_of(value)),
        }
    });
    env.add_filter("trim", |value: &Value, chars: Option<Value>| -> Result<Value, Error> {
        let text = match value.as_str() {
            Some(s) => s.to_owned(),
            None => py::str_of(value),
        };
        let trimmed = py::strip(&text, chars.as_ref(), py::Side::Both)?;
        Ok(if value.is_safe() { Value::from_safe_string(trimmed.to_owned()) } else { Value::from(trimmed) })
    });
    env.add_function("raise_exception", |message: Value| -> Result<Value, Error> {
        let message = message.as_str().map(str::to_owned).unwrap_or_else(|| py::str_of(&message));
        Err(Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(TemplateRaised(message)))
    });
    env.add_function("strftime_now", |state: &State, format: String| -> Result<Value, Error> {
        let kwargs = Kwargs::from_iter([("format", Value::from(format))]);
        minijinja_contrib::filters::datetimeformat(state, minijinja_contrib::globals::now(), kwargs)
            .map(Value::from)
    });
    env.add_function("cycler", minijinja_contrib::globals::cycler);
    env.add_function("joiner", minijinja_contrib::globals::joiner);
    env
}

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`, positional
/// arguments in that order.
pub(super) fn tojson_filter(value: &Value, args: Rest<ValueOrKwargs>) -> Result<Value, Error> {
    let args = args.into_values();
    let (positional, kwargs): (&[Value], Kwargs) = from_args(&args)?;
    const NAMES: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];
    if positional.len() > NAMES.len() {
        return Err(Error::from(ErrorKind::TooManyArguments));
    }
    let mut slots: [Option<Value>; 4] = Default::default();
    for (slot, arg) in slots.iter_mut().zip(positional) {
        *slot = Some(arg.clone());
    }
    for (slot, name) in slots.iter_mut().zip(NAMES) {
        if let Some(v) = kwargs.get::<Option<Value>>(name)? {
            if slot.is_some() {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson got multiple values for `{name}`"),
                ));
            }
            *slot = Some(v);
        }
    }
    kwargs.assert_all_used()?;
    let [ensure_ascii, indent, separators, sort_keys] = slots;
    let opts = py::JsonOptions::new(
        ensure_ascii.is_some_and(|v| v.is_true()),
        indent.filter(|v| !v.is_none()),
        separators.filter(|v| !v.is_none()),
        sort_keys.is_some_and(|v| v.is_true()),
    )?;
    Ok(Value::from(py::dumps(value, &opts)?))
}

/// Python semantics for the values templates print, compare and serialise.
pub(super) mod py {
    use super::*;

    /// `str.isspace()`: Rust's `char::is_whitespace` plus the ASCII information separators 0x1c..=0x1f.
    pub fn is_space(c: char) -> bool {
        matches!(c, '\t'..='\r' | '\x1c'..='\x20' | '\u{85}' | '\u{a0}' | '\u{1680}' | '\u{2000}'..='\u{200a}')
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202f}' | '\u{205f}' | '\u{3000}')
    }

    #[derive(Clone, Copy)]
    pub enum Side {
        Left,
        Right,
        Both,
    }

    /// `str.strip/lstrip/rstrip(chars)`; `chars` none means whitespace.
    pub fn strip<'s>(s: &'s str, chars: Option<&Value>, side: Side) -> Result<&'s str, Error> {
        let set: Option<Vec<char>> = match chars {
            None => None,
            Some(v) if v.is_none() || v.is_undefined() => None,
            Some(v) => match v.as_str() {
                Some(chars) => Some(chars.chars().collect()),
                None => return Err(Error::new(ErrorKind::InvalidOperation, "strip arg must be None or str")),
            },
        };
        let matches = |c: char| match &set {
            None => is_space(c),
            Some(set) => set.contains(&c),
        };
        Ok(match side {
            Side::Left => s.trim_start_matches(matches),
            Side::Right => s.trim_end_matches(matches),
            Side::Both => s.trim_matches(matches),
        })
    }

    /// `str.split(None, maxsplit)`.
    pub fn split_whitespace(s: &str, maxsplit: Option<usize>) -> Vec<&str> {
        let mut parts = Vec::new();
        let mut rest = s.trim_start_matches(is_space);
        while !rest.is_empty() {
            if maxsplit == Some(parts.len()) {
                parts.push(rest);
                break;
            }
            match rest.find(is_space) {
                Some(i) => {
                    parts.push(&rest[..i]);
                    rest = rest[i..].trim_start_matches(is_space);
                }
                None => {
                    parts.push(rest);
                    break;
                }
            }
        }
        parts
    }

    /// Python string methods whose whitespace rules differ from Rust's, then minijinja-contrib's
    /// Python compatibility layer for the rest.
    pub fn method(state: &mut State, value: &Value, name: &str, args: &[Value]) -> Result<Value, Error> {
        if let Some(s) = value.as_str() {
            let side = match name {
                "strip" => Some(Side::Both),
                "lstrip" => Some(Side::Left),
                "rstrip" => Some(Side::Right),
                _ => None,
            };
            if let Some(side) = side {
                let (chars,): (Option<Value>,) = from_args(args)?;
                return Ok(Value::from(strip(s, chars.as_ref(), side)?));
            }
            if name == "split" && args.first().is_none_or(|sep| sep.is_none()) {
                let (_, maxsplit): (Option<Value>, Option<i64>) = from_args(args)?;
                let maxsplit = maxsplit.and_then(|n| usize::try_from(n).ok());
                return Ok(Value::from_iter(split_whitespace(s, maxsplit).into_iter().map(Value::from)));
            }
        }
        minijinja_contrib::pycompat::unknown_method_callback(state, value, name, args)
    }

    /// `float.__repr__`: shortest round-trip digits, exponent form below 1e-4 and from 1e16 on.
    pub fn float_repr(x: f64) -> String {
        if x.is_nan() {
            return "nan".to_owned();
        }
        if x.is_infinite() {
            return if x > 0.0 { "inf" } else { "-inf" }.to_owned();
        }
        let sign = if x.is_sign_negative() { "-" } else { "" };
        if x == 0.0 {
            return format!("{sign}0.0");
        }
        let sci = format!("{:e}", x.abs());
        let (mantissa, exp) = sci.split_once('e').expect("LowerExp always has an exponent");
        let exp: i32 = exp.parse().expect("LowerExp exponent is an integer");
        let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
        let decpt = exp + 1;
        if !(-4 < decpt && decpt <= 16) {
            let (first, rest) = digits.split_at(1);
            let dot = if rest.is_empty() { String::new() } else { format!(".{rest}") };
            let esign = if exp < 0 { '-' } else { '+' };
            format!("{sign}{first}{dot}e{esign}{:02}", exp.unsigned_abs())
        } else if decpt <= 0 {
            format!("{sign}0.{}{digits}", "0".repeat(decpt.unsigned_abs() as usize))
        } else {
            let decpt = decpt as usize;
            if decpt >= digits.len() {
                format!("{sign}{digits}{}.0", "0".repeat(decpt - digits.len()))
            } else {
                format!("{sign}{}.{}", &digits[..decpt], &digits[decpt..])
            }
        }
    }

    fn number_str(value: &Value) -> String {
        if value.is_integer() {
            value.to_string()
        } else {
            f64::try_from(value.clone()).map(float_repr).unwrap_or_else(|_| value.to_string())
        }
    }

    /// Python's `str(value)`, which Jinja2 uses to print values and for the `string` filter.
    pub fn str_of(value: &Value) -> String {
        match value.kind() {
            ValueKind::Undefined => String::new(),
            ValueKind::String => value.as_str().unwrap_or_default().to_owned(),
            _ => repr(value),
        }
    }

    /// Python's `repr(value)` for the JSON-like values templates handle.
    pub fn repr(value: &Value) -> String {
        match value.kind() {
            ValueKind::Undefined => "Undefined".to_owned(),
            ValueKind::None => "None".to_owned(),
            ValueKind::Bool => if value.is_true() { "True" } else { "False" }.to_owned(),
            ValueKind::Number => number_str(value),
            ValueKind::String => str_repr(value.as_str().unwrap_or_default()),
            ValueKind::Seq => {
                let items: Vec<String> =
                    value.try_iter().map(|it| it.map(|v| repr(&v)).collect()).unwrap_or_default();
                format!("[{}]", items.join(", "))
            }
            ValueKind::Map => {
                let items: Vec<String> = value
                    .try_iter()
                    .map(|keys| {
                        keys.map(|k| {
                            let v = value.get_item(&k).unwrap_or_default();
                            format!("{}: {}", repr(&k), repr(&v))
                        })
                        .collect()
                    })
                    .unwrap_or_default();
                format!("{{{}}}", items.join(", "))
            }
            _ => value.to_string(),
        }
    }

    /// Approximates `str.isprintable()` without Unicode tables: separators, format characters and private
    /// use characters that show up in practice are treated as unprintable.
    fn is_printable(c: char) -> bool {
        !matches!(c,
            '\0'..='\x1f' | '\x7f'..='\u{a0}' | '\u{ad}' | '\u{1680}' | '\u{180e}' | '\u{2000}'..='\u{200f}'
            | '\u{2028}'..='\u{202f}' | '\u{205f}'..='\u{206f}' | '\u{3000}' | '\u{e000}'..='\u{f8ff}'
            | '\u{feff}' | '\u{fff9}'..='\u{fffb}' | '\u{f0000}'..='\u{10ffff}')
    }

    fn str_repr(s: &str) -> String {
        let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
        let mut out = String::with_capacity(s.len() + 2);
        out.push(quote);
        for c in s.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\t' => out.push_str("\\t"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                c if c == quote => {
                    out.push('\\');
                    out.push(c);
                }
                c if is_printable(c) => out.push(c),
                c if (c as u32) < 0x100 => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                c if (c as u32) < 0x10000 => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => {
                    let _ = write!(out, "\\U{:08x}", c as u32);
                }
            }
        }
        out.push(quote);
        out
    }

    pub struct JsonOptions {
        ensure_ascii: bool,
        indent: Option<String>,
        item_separator: String,
        key_separator: String,
        sort_keys: bool,
    }

    impl JsonOptions {
        pub fn new(
            ensure_ascii: bool,
            indent: Option<Value>,
            separators: Option<Value>,
            sort_keys: bool,
        ) -> Result<Self, Error> {
            let indent = match indent {
                None => None,
                Some(v) => Some(match v.as_str() {
                    Some(s) => s.to_owned(),
                    // json.dumps repeats a space `indent` times (`True` counting as 1, negatives as 0).
                    None if v.kind() == ValueKind::Bool => if v.is_true() { " " } else { "" }.to_owned(),
                    None if v.is_integer() => {
                        let n = usize::try_from(i64::try_from(v.clone())?).unwrap_or(0);
                        if n > MAX_INDENT {
                            return Err(Error::new(
                                ErrorKind::InvalidOperation,
                                format!("tojson indent {n} is larger than {MAX_INDENT}"),
                            ));
                        }
                        " ".repeat(n)
                    }
                    None => {
                        return Err(Error::new(
                            ErrorKind::InvalidOperation,
                            "tojson indent must be an int or str",
                        ))
                    }
                }),
            };
            // json.dumps drops the space after "," when indenting, so lines carry no trailing blanks.
            let (item_separator, key_separator) = match separators {
                None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
                None => (", ".to_owned(), ": ".to_owned()),
                Some(pair) => {
                    let parts: Vec<Value> = pair.try_iter()?.collect();
                    match parts.as_slice() {
                        [item, key] if item.as_str().is_some() && key.as_str().is_some() => (
                            item.as_str().unwrap_or_default().to_owned(),
                            key.as_str().unwrap_or_default().to_owned(),
                        ),
                        _ => {
                            return Err(Error::new(
                                ErrorKind::InvalidOperation,
                                "tojson separators must be a pair of strings",
                            ))
                        }
                    }
                }
            };
            Ok(JsonOptions { ensure_ascii, indent, item_separator, key_separator, sort_keys })
        }

        fn newline(&self, out: &mut String, level: usize) {
            if let Some(indent) = &self.indent {
                out.push('\n');
                for _ in 0..level {
                    out.push_str(indent);
                }
            }
        }
    }

    /// `json.dumps(value, ...)` with Python's escaping, number formatting and layout.
    pub fn dumps(value: &Value, opts: &JsonOptions) -> Result<String, Error> {
        let mut out = String::new();
        write_json(&mut out, value, opts, 0)?;
        Ok(out)
    }

    fn not_serializable(value: &Value) -> Error {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("Object of type {} is not JSON serializable", value.kind()),
        )
    }

    fn write_json(out: &mut String, value: &Value, opts: &JsonOptions, level: usize) -> Result<(), Error> {
        match value.kind() {
            ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number if value.is_integer() => out.push_str(&value.to_string()),
            ValueKind::Number => {
                let x = f64::try_from(value.clone())?;
                match x {
                    x if x.is_nan() => out.push_str("NaN"),
                    x if x == f64::INFINITY => out.push_str("Infinity"),
                    x if x == f64::NEG_INFINITY => out.push_str("-Infinity"),
                    x => out.push_str(&float_repr(x)),
                }
            }
            ValueKind::String => write_json_str(out, value.as_str().unwrap_or_default(), opts.ensure_ascii),
            ValueKind::Seq => {
                let items: Vec<Value> = value.try_iter()?.collect();
                if items.is_empty() {
                    out.push_str("[]");
                    return Ok(());
                }
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&opts.item_separator);
                    }
                    opts.newline(out, level + 1);
                    write_json(out, item, opts, level + 1)?;
                }
                opts.newline(out, level);
                out.push(']');
            }
            ValueKind::Map => {
                let mut entries = Vec::new();
                for key in value.try_iter()? {
                    let item = value.get_item(&key)?;
                    entries.push((json_key(&key)?, item));
                }
                if entries.is_empty() {
                    out.push_str("{}");
                    return Ok(());
                }
                if opts.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                }
                out.push('{');
                for (i, (key, item)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&opts.item_separator);
                    }
                    opts.newline(out, level + 1);
                    write_json_str(out, key, opts.ensure_ascii);
                    out.push_str(&opts.key_separator);
                    write_json(out, item, opts, level + 1)?;
                }
                opts.newline(out, level);
                out.push('}');
            }
            _ => return Err(not_serializable(value)),
        }
        Ok(())
    }

    /// json.dumps turns non-string keys into their JSON spelling (`true`, `null`, `1.5`).
    fn json_key(key: &Value) -> Result<String, Error> {
        match key.kind() {
            ValueKind::String => Ok(key.as_str().unwrap_or_default().to_owned()),
            ValueKind::None => Ok("null".to_owned()),
            ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.to_owned()),
            ValueKind::Number => Ok(number_str(key)),
            _ => Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("keys must be str, int, float, bool or None, not {}", key.kind()),
            )),
        }
    }

    fn write_json_str(out: &mut String, s: &str, ensure_ascii: bool) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (ensure_ascii && (c as u32) > 0x7e) => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}
