use thiserror::Error;

/// A value from outside (a request, the CLI, the config) that is not a valid domain value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The value is empty where one is required.
    #[error("{what} is empty")]
    Empty {
        /// What was being parsed.
        what: &'static str,
    },
    /// The value is longer than its limit.
    #[error("{what} is longer than {max} bytes")]
    TooLong {
        /// What was being parsed.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// There are more items than the limit.
    #[error("more than {max} {what}")]
    TooMany {
        /// What was being parsed.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// The value has a character or form that is not allowed.
    #[error("{what} {value:?} is invalid: {why}")]
    Invalid {
        /// What was being parsed.
        what: &'static str,
        /// The offending value (never a secret: only identifiers are parsed here).
        value: String,
        /// What the value must look like.
        why: &'static str,
    },
}

pub(crate) fn check_len(what: &'static str, s: &str, max: usize) -> Result<(), ParseError> {
    if s.is_empty() {
        return Err(ParseError::Empty { what });
    }
    if s.len() > max {
        return Err(ParseError::TooLong { what, max });
    }
    Ok(())
}

/// Shortens a value for an error message so a huge input does not make a huge message.
pub(crate) fn shown(s: &str) -> String {
    if s.len() <= 80 {
        s.to_owned()
    } else {
        let mut end = 80;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    }
}
