//! Validated names: projects, channels and the Socket.IO rooms built from them.
//!
//! A value of these types is always valid; the only ways to get one are the `parse`
//! constructors (or `Deserialize`, which calls them). Room names are built here and nowhere
//! else, so the `{projectId}:{channelName}` layout that keeps tenants apart has one home.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::ErrorCode;

/// The prefix that makes a channel private.
pub const PRIVATE_PREFIX: &str = "private-";

/// The word that, at the start of a channel name in any letter case, makes the name read as
/// private: only [`PRIVATE_PREFIX`] followed by at least one character may start with it.
pub const PRIVATE_WORD: &str = "private";

/// The prefix that makes a channel a presence channel (private, and its members are known).
pub const PRESENCE_PREFIX: &str = "presence-";

/// The word that, at the start of a channel name in any letter case, makes the name read as a
/// presence channel: only [`PRESENCE_PREFIX`] followed by at least one character may start
/// with it.
pub const PRESENCE_WORD: &str = "presence";

/// The reserved words of channel names, each with the one prefix that may start with it and
/// the kind that prefix makes. A name starting with a word in any letter case must start with
/// exactly its prefix followed by at least one character.
const RESERVED: [(&str, &str, ChannelKind); 2] = [
    (PRIVATE_WORD, PRIVATE_PREFIX, ChannelKind::Private),
    (PRESENCE_WORD, PRESENCE_PREFIX, ChannelKind::Presence),
];

/// Longest channel name, in bytes.
pub const MAX_CHANNEL_NAME_BYTES: usize = 164;

/// Longest project id, in bytes.
pub const MAX_PROJECT_ID_BYTES: usize = 63;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The project id does not match `[a-z0-9][a-z0-9-]{0,62}`.
    #[error(
        "invalid project id {0:?}: expected 1 to 63 characters of a-z, 0-9 and '-', not starting with '-'"
    )]
    InvalidProjectId(String),
    /// The channel name is empty.
    #[error("channel name is empty")]
    EmptyChannelName,
    /// The channel name is longer than [`MAX_CHANNEL_NAME_BYTES`].
    #[error("channel name is {0} bytes long; the limit is 164")]
    ChannelNameTooLong(usize),
    /// The channel name holds a character outside `A-Z a-z 0-9 _ - = @ , . ;`.
    #[error("channel name holds {0:?}; allowed are A-Z a-z 0-9 and _ - = @ , . ;")]
    InvalidChannelChar(char),
    /// The name starts like a private or presence channel (`private`, `presence`, any case)
    /// but not with exactly `private-` / `presence-`, or is the prefix with nothing after it.
    #[error(
        "channel name {0:?} is ambiguous: private channels start with exactly \"private-\" and presence channels with exactly \"presence-\", followed by a name; other names must not start with \"private\" or \"presence\""
    )]
    AmbiguousChannelName(String),
    /// A room name that is not `{projectId}:{channelName}`.
    #[error("invalid room name {0:?}")]
    InvalidRoomName(String),
    /// An API key id that is not 16 lowercase hex characters.
    #[error("invalid API key id: expected 16 lowercase hex characters")]
    InvalidApiKeyId,
}

impl NameError {
    /// The protocol error code this refusal is answered with.
    pub fn code(&self) -> ErrorCode {
        match self {
            NameError::InvalidProjectId(_) => ErrorCode::InvalidProjectId,
            NameError::InvalidApiKeyId => ErrorCode::ApiKeyNotFound,
            NameError::AmbiguousChannelName(_) => ErrorCode::AmbiguousChannelName,
            NameError::EmptyChannelName
            | NameError::ChannelNameTooLong(_)
            | NameError::InvalidChannelChar(_)
            | NameError::InvalidRoomName(_) => ErrorCode::InvalidChannelName,
        }
    }
}

/// A project (tenant) id: `[a-z0-9][a-z0-9-]{0,62}`.
///
/// ```
/// use herald_protocol::ProjectId;
/// assert!(ProjectId::parse("acme-prod").is_ok());
/// assert!(ProjectId::parse("-acme").is_err());
/// assert!(ProjectId::parse("Acme").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ProjectId(String);

impl ProjectId {
    /// Validates `s` as a project id.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let bytes = s.as_bytes();
        let valid = bytes.len() <= MAX_PROJECT_ID_BYTES
            && bytes
                .first()
                .is_some_and(|b| is_project_id_start(char::from(*b)))
            && bytes.iter().all(|b| is_project_id_char(char::from(*b)));
        if valid {
            Ok(Self(s.to_owned()))
        } else {
            Err(NameError::InvalidProjectId(truncate_for_error(s)))
        }
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether a channel needs a token to listen to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    /// Anyone connected to the project may listen.
    Public,
    /// Listening needs a channel token signed by the project (name starts with `private-`).
    Private,
    /// A private channel whose members are known (name starts with `presence-`): listening
    /// needs a channel token that names the user (`sub`), and the channel's members see each
    /// other join and leave.
    Presence,
}

impl ChannelKind {
    /// `public`, `private` or `presence` (metric labels, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Public => "public",
            ChannelKind::Private => "private",
            ChannelKind::Presence => "presence",
        }
    }
}

/// A channel name: 1 to 164 bytes of `A-Z a-z 0-9 _ - = @ , . ;`, never containing `:`.
///
/// Names starting with `private-` are private, names starting with `presence-` are presence
/// channels. Any other name whose start reads as "private" or "presence" in any letter case
/// (`private`, `privateer`, `Private-x`, `PRIVATE_x`, `Presence-x`, `presencex`) is refused
/// as ambiguous, so a typo can never turn a private channel into a public one.
///
/// ```
/// use herald_protocol::{ChannelKind, ChannelName};
/// assert_eq!(ChannelName::parse("orders")?.kind(), ChannelKind::Public);
/// assert_eq!(ChannelName::parse("private-u1")?.kind(), ChannelKind::Private);
/// assert_eq!(ChannelName::parse("presence-room1")?.kind(), ChannelKind::Presence);
/// assert!(ChannelName::parse("acme:orders").is_err());
/// assert!(ChannelName::parse("Presence-room1").is_err());
/// # Ok::<(), herald_protocol::NameError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ChannelName(String);

impl ChannelName {
    /// Validates `s` as a channel name.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.is_empty() {
            return Err(NameError::EmptyChannelName);
        }
        if s.len() > MAX_CHANNEL_NAME_BYTES {
            return Err(NameError::ChannelNameTooLong(s.len()));
        }
        if let Some(c) = s.chars().find(|c| !is_channel_char(*c)) {
            return Err(NameError::InvalidChannelChar(c));
        }
        for (word, prefix, _) in RESERVED {
            let starts_like_word = s
                .get(..word.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(word));
            if starts_like_word && (!s.starts_with(prefix) || s.len() == prefix.len()) {
                return Err(NameError::AmbiguousChannelName(s.to_owned()));
            }
        }
        Ok(Self(s.to_owned()))
    }

    /// Public, private or presence.
    pub fn kind(&self) -> ChannelKind {
        RESERVED
            .iter()
            .find(|(_, prefix, _)| self.0.starts_with(prefix))
            .map_or(ChannelKind::Public, |(_, _, kind)| *kind)
    }

    /// Shorthand for `kind() == ChannelKind::Private` (presence channels are not included;
    /// see [`ChannelName::needs_token`]).
    pub fn is_private(&self) -> bool {
        self.kind() == ChannelKind::Private
    }

    /// Shorthand for `kind() == ChannelKind::Presence`.
    pub fn is_presence(&self) -> bool {
        self.kind() == ChannelKind::Presence
    }

    /// Whether listening needs a channel token: private and presence channels.
    pub fn needs_token(&self) -> bool {
        self.kind() != ChannelKind::Public
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The characters a channel name may hold.
pub fn is_channel_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '=' | '@' | ',' | '.' | ';')
}

/// The characters a project id may start with.
pub fn is_project_id_start(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// The characters a project id may hold.
pub fn is_project_id_char(c: char) -> bool {
    is_project_id_start(c) || c == '-'
}

/// The rule of [`ProjectId::parse`] as a regular expression (ECMA 262, as JSON Schema's
/// `pattern`), built from the same predicates. The length bound, 1 to [`MAX_PROJECT_ID_BYTES`],
/// is not in it (`minLength`/`maxLength`; the alphabet is ASCII, so characters are bytes).
pub fn project_id_pattern() -> String {
    format!(
        "^{}{}*$",
        regex_class(is_project_id_start),
        regex_class(is_project_id_char)
    )
}

/// The rule of [`ChannelName::parse`] as a regular expression (ECMA 262, as JSON Schema's
/// `pattern`), built from [`is_channel_char`] and the reserved words and prefixes
/// ([`PRIVATE_PREFIX`], [`PRESENCE_PREFIX`]…): either a name with one of the prefixes, or a
/// name that does not start with a reserved word in any letter case (a proper prefix of one,
/// like `pr` or `presenc`, is fine). No look-around, so every regex dialect reads it the same.
/// The length bound, 1 to [`MAX_CHANNEL_NAME_BYTES`], is not in it (`minLength`/`maxLength`;
/// the alphabet is ASCII).
pub fn channel_name_pattern() -> String {
    let any = regex_class(is_channel_char);
    let prefixed: Vec<String> = RESERVED
        .iter()
        .map(|(_, prefix, _)| format!("{prefix}{any}+"))
        .collect();
    let words: Vec<&str> = RESERVED.iter().map(|(word, _, _)| *word).collect();
    format!("^(?:{}|{})$", prefixed.join("|"), avoiding(&words, 0, &any))
}

/// The pattern of what may follow the `depth` characters that `words` (lowercase, none a
/// prefix of another) share, in a name that must not start with any of them: a character that
/// continues none of them and then anything, or a character that continues some of them and
/// then the same rule one level down; after the first level, also nothing (the name is a
/// proper prefix of a word).
fn avoiding(words: &[&str], depth: usize, any: &str) -> String {
    let mut letters: Vec<char> = words.iter().filter_map(|w| w.chars().nth(depth)).collect();
    letters.sort_unstable();
    letters.dedup();
    let other =
        regex_class(|c| is_channel_char(c) && !letters.iter().any(|l| c.eq_ignore_ascii_case(l)));
    let mut alternatives = vec![format!("{other}{any}*")];
    for letter in &letters {
        let continuing: Vec<&str> = words
            .iter()
            .copied()
            .filter(|w| w.chars().nth(depth) == Some(*letter) && w.len() > depth + 1)
            .collect();
        // A word that ends with this letter allows nothing after it.
        if !continuing.is_empty() {
            alternatives.push(format!(
                "[{}{}]{}",
                letter.to_ascii_uppercase(),
                letter,
                avoiding(&continuing, depth + 1, any)
            ));
        }
    }
    let body = alternatives.join("|");
    if depth == 0 {
        format!("(?:{body})")
    } else {
        format!("(?:{body})?")
    }
}

/// The names of private channels as a regular expression, like [`channel_name_pattern`].
pub fn private_channel_name_pattern() -> String {
    format!("^{PRIVATE_PREFIX}{}+$", regex_class(is_channel_char))
}

/// The names a channel token can be signed for (private and presence channels) as a regular
/// expression, like [`channel_name_pattern`].
pub fn token_channel_name_pattern() -> String {
    let any = regex_class(is_channel_char);
    let prefixed: Vec<String> = RESERVED
        .iter()
        .map(|(_, prefix, _)| format!("{prefix}{any}+"))
        .collect();
    format!("^(?:{})$", prefixed.join("|"))
}

/// A regular-expression character class of the ASCII characters `allowed` accepts, e.g.
/// `[,\-.0-9;=@A-Z_a-z]`: runs of letters and digits as ranges, punctuation escaped where a class
/// needs it. Only ASCII is looked at: every Herald name rule is ASCII.
pub(crate) fn regex_class(allowed: impl Fn(char) -> bool) -> String {
    let chars: Vec<char> = (0u8..128).map(char::from).filter(|c| allowed(*c)).collect();
    let mut out = String::from("[");
    let mut i = 0;
    while i < chars.len() {
        let mut end = i;
        let alphanumeric = chars[i].is_ascii_alphanumeric();
        while chars.get(end + 1).is_some_and(|next| {
            u32::from(*next) == u32::from(chars[end]) + 1
                && next.is_ascii_alphanumeric() == alphanumeric
        }) {
            end += 1;
        }
        let (first, last) = (chars[i], chars[end]);
        if alphanumeric && end - i >= 2 {
            out.push(first);
            out.push('-');
            out.push(last);
        } else {
            for c in &chars[i..=end] {
                if matches!(c, '\\' | ']' | '[' | '^' | '-') {
                    out.push('\\');
                }
                out.push(*c);
            }
        }
        i = end + 1;
    }
    out.push(']');
    out
}

/// A Socket.IO room name. Built only by this crate.
///
/// * [`RoomName::channel`]: `{projectId}:{channelName}`, the room of one channel of one project.
/// * [`RoomName::project`]: `{projectId}`, a room every socket of the project joins, used to
///   disconnect a deleted project's clients. It holds no `:`, so it can never equal a channel
///   room.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RoomName(String);

impl RoomName {
    /// The room of `channel` in `project`.
    pub fn channel(project: &ProjectId, channel: &ChannelName) -> Self {
        Self(format!("{}:{}", project.as_str(), channel.as_str()))
    }

    /// The room every socket of `project` is in.
    pub fn project(project: &ProjectId) -> Self {
        Self(project.as_str().to_owned())
    }

    /// Parses a channel room name back into its project and channel.
    pub fn parse_channel(s: &str) -> Result<(ProjectId, ChannelName), NameError> {
        let (project, channel) = s
            .split_once(':')
            .ok_or_else(|| NameError::InvalidRoomName(truncate_for_error(s)))?;
        Ok((ProjectId::parse(project)?, ChannelName::parse(channel)?))
    }

    /// Parses either form back into a room name (a project's room or a channel's room), as
    /// it travels between instances.
    ///
    /// ```
    /// use herald_protocol::RoomName;
    /// assert_eq!(RoomName::parse("acme:news").unwrap().as_str(), "acme:news");
    /// assert_eq!(RoomName::parse("acme").unwrap().as_str(), "acme");
    /// assert!(RoomName::parse("acme:bad name").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<Self, NameError> {
        match s.split_once(':') {
            Some(_) => {
                let (project, channel) = Self::parse_channel(s)?;
                Ok(Self::channel(&project, &channel))
            }
            None => Ok(Self::project(&ProjectId::parse(s)?)),
        }
    }

    /// The room name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The room name as an owned string (what Socket.IO adapters take).
    pub fn into_string(self) -> String {
        self.0
    }
}

macro_rules! string_newtype_impls {
    ($($ty:ident),*) => {$(
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl From<$ty> for String {
            fn from(v: $ty) -> String {
                v.0
            }
        }
    )*};
}
string_newtype_impls!(ProjectId, ChannelName, RoomName);

impl std::str::FromStr for ProjectId {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl std::str::FromStr for ChannelName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<'de> Deserialize<'de> for ProjectId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for ChannelName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Keeps error messages short when a client sends a huge name.
fn truncate_for_error(s: &str) -> String {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn project_ids() {
        for ok in ["a", "0", "acme", "acme-prod-2", &"a".repeat(63)] {
            assert!(ProjectId::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "A",
            "acme_prod",
            "acme:x",
            "ac me",
            &"a".repeat(64),
            "é",
        ] {
            assert_eq!(
                ProjectId::parse(bad).map_err(|e| e.code()),
                Err(ErrorCode::InvalidProjectId),
                "{bad}"
            );
        }
    }

    #[test]
    fn channel_names() {
        for ok in [
            "orders",
            "a",
            "A-Z_a=z@0,9.;",
            "private-u1",
            "priv",
            "privat",
            "pri-vate",
        ] {
            assert!(ChannelName::parse(ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(164);
        assert!(ChannelName::parse(&long).is_ok());
        assert_eq!(
            ChannelName::parse(&"x".repeat(165)),
            Err(NameError::ChannelNameTooLong(165))
        );
        assert_eq!(ChannelName::parse(""), Err(NameError::EmptyChannelName));
        assert_eq!(
            ChannelName::parse("acme:orders"),
            Err(NameError::InvalidChannelChar(':'))
        );
        for bad in ["a b", "a/b", "é", "a\n", "a*"] {
            assert_eq!(
                ChannelName::parse(bad).map_err(|e| e.code()),
                Err(ErrorCode::InvalidChannelName),
                "{bad}"
            );
        }
    }

    #[test]
    fn ambiguous_private_names() {
        for bad in [
            "private",
            "privateer",
            "private_x",
            "Private-x",
            "PRIVATE-x",
            "private-",
            "privatE",
        ] {
            assert_eq!(
                ChannelName::parse(bad).map_err(|e| e.code()),
                Err(ErrorCode::AmbiguousChannelName),
                "{bad}"
            );
        }
        assert!(ChannelName::parse("private-x").is_ok_and(|c| c.is_private()));
        assert!(ChannelName::parse("x-private-x").is_ok_and(|c| !c.is_private()));
    }

    #[test]
    fn ambiguous_presence_names() {
        for bad in [
            "presence",
            "presencex",
            "presence_x",
            "Presence-x",
            "PRESENCE-x",
            "presence-",
            "presencE",
        ] {
            assert_eq!(
                ChannelName::parse(bad).map_err(|e| e.code()),
                Err(ErrorCode::AmbiguousChannelName),
                "{bad}"
            );
        }
        let presence = ChannelName::parse("presence-room").expect("valid");
        assert_eq!(presence.kind(), ChannelKind::Presence);
        assert!(presence.needs_token() && !presence.is_private());
        for public in ["presenc", "pres", "x-presence-x", "prefix"] {
            assert_eq!(
                ChannelName::parse(public).map(|c| c.kind()),
                Ok(ChannelKind::Public),
                "{public}"
            );
        }
    }

    #[test]
    fn rooms() {
        let p = ProjectId::parse("acme").expect("valid");
        let c = ChannelName::parse("orders").expect("valid");
        let room = RoomName::channel(&p, &c);
        assert_eq!(room.as_str(), "acme:orders");
        assert_eq!(RoomName::parse_channel(room.as_str()), Ok((p.clone(), c)));
        assert_eq!(RoomName::project(&p).as_str(), "acme");
        assert!(RoomName::parse_channel("acme").is_err());
    }

    #[test]
    fn deserialize_validates() {
        assert!(serde_json::from_str::<ChannelName>("\"orders\"").is_ok());
        assert!(serde_json::from_str::<ChannelName>("\"or ders\"").is_err());
        assert!(serde_json::from_str::<ProjectId>("\"ACME\"").is_err());
    }

    fn matcher(pattern: &str) -> regex_automata::meta::Regex {
        regex_automata::meta::Regex::new(pattern).expect("the pattern compiles")
    }

    /// What a JSON Schema validator decides for a string schema with `pattern` and lengths
    /// 1..=`max` (in characters).
    fn schema_accepts(re: &regex_automata::meta::Regex, max: usize, s: &str) -> bool {
        (1..=max).contains(&s.chars().count()) && re.is_match(s)
    }

    #[test]
    fn patterns_read_as_expected() {
        assert_eq!(project_id_pattern(), "^[0-9a-z][\\-0-9a-z]*$");
        assert_eq!(
            private_channel_name_pattern(),
            "^private-[,\\-.0-9;=@A-Z_a-z]+$"
        );
        assert_eq!(
            token_channel_name_pattern(),
            "^(?:private-[,\\-.0-9;=@A-Z_a-z]+|presence-[,\\-.0-9;=@A-Z_a-z]+)$"
        );
        let channel = channel_name_pattern();
        assert!(channel.starts_with("^(?:private-[,\\-.0-9;=@A-Z_a-z]+|presence-[,\\-.0-9;=@A-Z_a-z]+|(?:[,\\-.0-9;=@A-OQ-Z_a-oq-z][,\\-.0-9;=@A-Z_a-z]*|[Pp](?:[,\\-.0-9;=@A-QS-Z_a-qs-z]"), "{channel}");
    }

    #[test]
    fn channel_pattern_agrees_with_the_parser_on_the_edge_cases() {
        let re = matcher(&channel_name_pattern());
        let private = matcher(&private_channel_name_pattern());
        for s in [
            "",
            "p",
            "P",
            "pr",
            "privat",
            "PRIVAT",
            "private",
            "Private",
            "private-",
            "private-a",
            "Private-a",
            "privateer",
            "private_x",
            "privatE-x",
            "privat-e",
            "privat3",
            "prxvate",
            "presence",
            "Presence-x",
            "presence-",
            "presence-a",
            "presencex",
            "presenc",
            "presenc3",
            "PRESENCE_x",
            "pre",
            "pres",
            "prex",
            "prv",
            "x-private-x",
            "orders",
            "a b",
            "a:b",
            "é",
            "orders\n",
            "\norders",
            &"x".repeat(164),
            &"x".repeat(165),
            &format!("private-{}", "x".repeat(156)),
            &format!("private-{}", "x".repeat(157)),
        ] {
            let parsed = ChannelName::parse(s);
            assert_eq!(
                schema_accepts(&re, MAX_CHANNEL_NAME_BYTES, s),
                parsed.is_ok(),
                "{s:?}"
            );
            assert_eq!(
                schema_accepts(&private, MAX_CHANNEL_NAME_BYTES, s),
                parsed.is_ok_and(|c| c.is_private()),
                "{s:?}"
            );
        }
    }

    proptest! {
        /// The channel name pattern and length bound accept exactly what the parser accepts
        /// (the strings lean towards the "private" edge, where the rule is subtle).
        #[test]
        fn channel_pattern_is_the_parser(s in "([pP][rR][iI][vV][aA][tT][eE]?[-_xX]?)?[A-Za-z0-9_=@,.;: é\n-]{0,8}|([pP][rR][eE][sS][eE][nN][cC][eE]?[-_xX]?)?[A-Za-z0-9_=@,.;: é\n-]{0,8}|[a-z]{160,170}") {
            let re = matcher(&channel_name_pattern());
            let private = matcher(&private_channel_name_pattern());
            let parsed = ChannelName::parse(&s);
            prop_assert_eq!(schema_accepts(&re, MAX_CHANNEL_NAME_BYTES, &s), parsed.is_ok());
            prop_assert_eq!(
                schema_accepts(&private, MAX_CHANNEL_NAME_BYTES, &s),
                parsed.clone().is_ok_and(|c| c.is_private())
            );
            let token = matcher(&token_channel_name_pattern());
            prop_assert_eq!(
                schema_accepts(&token, MAX_CHANNEL_NAME_BYTES, &s),
                parsed.is_ok_and(|c| c.needs_token())
            );
        }

        /// The project id pattern and length bound accept exactly what the parser accepts.
        #[test]
        fn project_id_pattern_is_the_parser(s in "[a-z0-9A-Z_ -]{0,70}|\\PC{0,10}") {
            let re = matcher(&project_id_pattern());
            prop_assert_eq!(
                schema_accepts(&re, MAX_PROJECT_ID_BYTES, &s),
                ProjectId::parse(&s).is_ok()
            );
        }

        /// Every string over the allowed alphabet within the length bound is accepted unless it
        /// reads as "private" or "presence" without being a proper `private-` / `presence-`
        /// name.
        #[test]
        fn allowed_alphabet_is_accepted(s in "([pP][rR][eE][sS][eE][nN][cC][eE][-_]?)?[A-Za-z0-9_=@,.;-]{1,150}") {
            let looks_private = s.len() >= 7 && s[..7].eq_ignore_ascii_case("private");
            let proper_private = s.starts_with("private-") && s.len() > 8;
            let looks_presence = s.len() >= 8 && s[..8].eq_ignore_ascii_case("presence");
            let proper_presence = s.starts_with("presence-") && s.len() > 9;
            let parsed = ChannelName::parse(&s);
            if (looks_private && !proper_private) || (looks_presence && !proper_presence) {
                prop_assert_eq!(parsed.map_err(|e| e.code()), Err(ErrorCode::AmbiguousChannelName));
            } else {
                let name = parsed.expect("valid by construction");
                prop_assert_eq!(name.is_private(), proper_private);
                prop_assert_eq!(name.is_presence(), proper_presence);
                prop_assert_eq!(name.as_str(), s.as_str());
            }
        }

        /// Any string holding a character outside the alphabet is refused, whatever its length.
        #[test]
        fn foreign_characters_are_refused(prefix in "[a-z]{0,20}", bad in "[^A-Za-z0-9_=@,.;-]", suffix in "[a-z]{0,20}") {
            let s = format!("{prefix}{bad}{suffix}");
            prop_assert!(ChannelName::parse(&s).is_err());
        }

        /// Longer than 164 bytes is always refused.
        #[test]
        fn overlong_is_refused(s in "[a-z]{165,300}") {
            prop_assert_eq!(ChannelName::parse(&s), Err(NameError::ChannelNameTooLong(s.len())));
        }

        /// A room built from valid parts parses back to the same parts: no two (project, channel)
        /// pairs share a room.
        #[test]
        fn room_roundtrip(p in "[a-z0-9][a-z0-9-]{0,62}", c in "[a-oq-z0-9][A-Za-z0-9_=@,.;-]{0,163}") {
            let project = ProjectId::parse(&p).expect("valid");
            let channel = ChannelName::parse(&c).expect("valid");
            let room = RoomName::channel(&project, &channel);
            prop_assert_eq!(RoomName::parse_channel(room.as_str()), Ok((project, channel)));
        }

        #[test]
        fn project_id_rule(s in "[a-z0-9A-Z_-]{0,70}|\\PC{0,10}") {
            let b = s.as_bytes();
            let expected = !b.is_empty()
                && b.len() <= 63
                && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
                && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
            prop_assert_eq!(ProjectId::parse(&s).is_ok(), expected);
        }
    }
}
