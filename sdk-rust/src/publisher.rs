//! The REST side: [`Publisher`], [`Channel`], [`PrivateChannel`], [`PresenceChannel`] and
//! [`ChannelToken`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use herald_protocol::api::{PublishRequest, PublishResponse, SignRequest, SignResponse};
use herald_protocol::limits::DEFAULT_MAX_PAYLOAD_BYTES;
use herald_protocol::presence::{MemberInfo, UserId};
use herald_protocol::{ApiKeyId, ApiKeyToken, ChannelKind, ChannelName, ErrorBody};
use reqwest::Url;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::error::Error;
use crate::secret::SecretString;
use herald_client_core::Backoff;

const PUBLISH_PATH: &str = "v1/publishers/events/publish";
const SIGN_PATH: &str = "v1/publishers/sign";
const USER_AGENT: &str = concat!("herald-sdk-rust/", env!("CARGO_PKG_VERSION"));
/// Longest error body kept in [`Error::Http`].
const MAX_ERROR_BODY_CHARS: usize = 512;

/// Publishes events to channels and signs private-channel tokens, over Herald's REST API.
///
/// Cheap to clone: clones share one HTTP connection pool. Build one per process with
/// [`Publisher::builder`] or [`Publisher::from_env`].
///
/// ```no_run
/// # async fn run() -> Result<(), herald_sdk::Error> {
/// use herald_sdk::Publisher;
///
/// let publisher = Publisher::from_env()?; // HERALD_URL + HERALD_API_KEY(_FILE)
/// let orders = publisher.build_channel("orders")?;
/// let id = orders.publish_message(&serde_json::json!({"order": 42})).await?;
/// println!("published {id}");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    base_url: Url,
    publish_url: Url,
    sign_url: Url,
    key_id: ApiKeyId,
    authorization: HeaderValue,
    max_retries: u32,
    backoff: Backoff,
    retry_publish: bool,
    max_payload_bytes: usize,
    timeout: Duration,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("Publisher")
            .field("base_url", &i.base_url.as_str())
            .field("api_key", &format_args!("hk_{}_***", i.key_id))
            .field("timeout", &i.timeout)
            .field("max_retries", &i.max_retries)
            .field("retry_publish", &i.retry_publish)
            .field("max_payload_bytes", &i.max_payload_bytes)
            .finish()
    }
}

/// Settings of a [`Publisher`]; made by [`Publisher::builder`] or
/// [`PublisherBuilder::from_env`].
///
/// | setting | default |
/// |---|---|
/// | [`timeout`](Self::timeout) (per attempt) | 10 s |
/// | [`connect_timeout`](Self::connect_timeout) | 5 s |
/// | [`max_retries`](Self::max_retries) | 3 |
/// | [`retry_backoff`](Self::retry_backoff) | 200 ms doubling up to 10 s, jittered |
/// | [`retry_publish`](Self::retry_publish) | `false` |
/// | [`max_payload_bytes`](Self::max_payload_bytes) | 64 KiB (the server's default) |
///
/// Its `Debug` output never shows the API key.
///
/// ```
/// use std::time::Duration;
/// use herald_sdk::Publisher;
///
/// let key = format!("hk_0123456789abcdef_{}", "ab".repeat(32));
/// let publisher = Publisher::builder("https://herald.example.com", key)
///     .timeout(Duration::from_secs(5))
///     .max_retries(5)
///     .retry_backoff(Duration::from_millis(100), Duration::from_secs(2))
///     .build()?;
/// assert!(!format!("{publisher:?}").contains("abab"));
/// # Ok::<(), herald_sdk::Error>(())
/// ```
pub struct PublisherBuilder {
    base_url: String,
    api_key: SecretString,
    timeout: Duration,
    connect_timeout: Duration,
    max_retries: u32,
    backoff: Backoff,
    retry_publish: bool,
    max_payload_bytes: usize,
}

impl fmt::Debug for PublisherBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublisherBuilder")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_retries", &self.max_retries)
            .field("backoff", &self.backoff)
            .field("retry_publish", &self.retry_publish)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .finish()
    }
}

impl Publisher {
    /// Starts configuring a publisher for the server at `base_url` (e.g.
    /// `https://herald.example.com`, optionally with a path prefix) with `api_key`
    /// (`hk_<id>_<secret>`, from `herald admin key create`).
    ///
    /// ```
    /// use herald_sdk::Publisher;
    /// let key = format!("hk_0123456789abcdef_{}", "ab".repeat(32));
    /// let publisher = Publisher::builder("http://127.0.0.1:8080", key).build()?;
    /// assert_eq!(publisher.api_key_id().as_str(), "0123456789abcdef");
    /// # Ok::<(), herald_sdk::Error>(())
    /// ```
    pub fn builder(base_url: impl Into<String>, api_key: impl Into<String>) -> PublisherBuilder {
        PublisherBuilder {
            base_url: base_url.into(),
            api_key: SecretString::new(api_key.into()),
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_retries: 3,
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(10)),
            retry_publish: false,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
        }
    }

    /// A publisher configured from the environment, with default settings; see
    /// [`PublisherBuilder::from_env`] for the variables.
    ///
    /// ```no_run
    /// let publisher = herald_sdk::Publisher::from_env()?;
    /// # Ok::<(), herald_sdk::Error>(())
    /// ```
    pub fn from_env() -> Result<Publisher, Error> {
        PublisherBuilder::from_env()?.build()
    }

    /// A handle on the public channel `name`. The name is checked here, with the server's
    /// rules: an invalid name is [`Error::InvalidName`], a `private-` name is
    /// [`Error::WrongChannelKind`] (use [`build_private_channel`](Self::build_private_channel)).
    ///
    /// ```
    /// # let key = format!("hk_0123456789abcdef_{}", "ab".repeat(32));
    /// # let publisher = herald_sdk::Publisher::builder("http://127.0.0.1:8080", key).build()?;
    /// use herald_sdk::Error;
    ///
    /// let orders = publisher.build_channel("orders")?;
    /// assert_eq!(orders.name().as_str(), "orders");
    /// assert!(matches!(publisher.build_channel("a:b"), Err(Error::InvalidName(_))));
    /// assert!(matches!(publisher.build_channel("private-u1"), Err(Error::WrongChannelKind { .. })));
    /// # Ok::<(), herald_sdk::Error>(())
    /// ```
    pub fn build_channel(&self, name: impl AsRef<str>) -> Result<Channel, Error> {
        Ok(Channel {
            publisher: self.clone(),
            name: channel_of_kind(name.as_ref(), ChannelKind::Public)?,
        })
    }

    /// A handle on the private channel `name` (starting with `private-`). A public name is
    /// [`Error::WrongChannelKind`].
    ///
    /// ```
    /// # let key = format!("hk_0123456789abcdef_{}", "ab".repeat(32));
    /// # let publisher = herald_sdk::Publisher::builder("http://127.0.0.1:8080", key).build()?;
    /// let inbox = publisher.build_private_channel("private-user-42")?;
    /// assert!(publisher.build_private_channel("orders").is_err());
    /// # Ok::<(), herald_sdk::Error>(())
    /// ```
    pub fn build_private_channel(&self, name: impl AsRef<str>) -> Result<PrivateChannel, Error> {
        Ok(PrivateChannel {
            publisher: self.clone(),
            name: channel_of_kind(name.as_ref(), ChannelKind::Private)?,
        })
    }

    /// A handle on the presence channel `name` (starting with `presence-`): a private channel
    /// whose listeners are known to each other. Any other name is [`Error::WrongChannelKind`].
    ///
    /// ```
    /// # let key = format!("hk_0123456789abcdef_{}", "ab".repeat(32));
    /// # let publisher = herald_sdk::Publisher::builder("http://127.0.0.1:8080", key).build()?;
    /// let room = publisher.build_presence_channel("presence-room-7")?;
    /// assert!(publisher.build_presence_channel("private-room-7").is_err());
    /// # Ok::<(), herald_sdk::Error>(())
    /// ```
    pub fn build_presence_channel(&self, name: impl AsRef<str>) -> Result<PresenceChannel, Error> {
        Ok(PresenceChannel {
            publisher: self.clone(),
            name: channel_of_kind(name.as_ref(), ChannelKind::Presence)?,
        })
    }

    /// The public id of the API key (safe to log).
    ///
    /// ```no_run
    /// # let publisher = herald_sdk::Publisher::from_env()?;
    /// println!("publishing with key {}", publisher.api_key_id());
    /// # Ok::<(), herald_sdk::Error>(())
    /// ```
    pub fn api_key_id(&self) -> &ApiKeyId {
        &self.inner.key_id
    }

    async fn publish<P: Serialize + ?Sized>(
        &self,
        channel: &ChannelName,
        payload: &P,
    ) -> Result<String, Error> {
        let payload = serde_json::to_string(payload).map_err(|e| Error::Encode(Arc::new(e)))?;
        let limit = self.inner.max_payload_bytes;
        if payload.len() > limit {
            return Err(Error::PayloadTooLarge {
                size: payload.len(),
                limit,
            });
        }
        let payload = RawValue::from_string(payload).map_err(|e| Error::Encode(Arc::new(e)))?;
        let body = serde_json::to_vec(&PublishRequest {
            channel_name: channel.clone(),
            payload,
        })
        .map_err(|e| Error::Encode(Arc::new(e)))?;
        let retry = self.inner.retry_publish;
        let response: PublishResponse = self.post(&self.inner.publish_url, body, retry).await?;
        Ok(response.id)
    }

    async fn sign(
        &self,
        channel: &ChannelName,
        member: Option<(UserId, Option<MemberInfo>)>,
    ) -> Result<ChannelToken, Error> {
        let (user_id, user_info) = member.map_or((None, None), |(id, info)| (Some(id), info));
        let body = serde_json::to_vec(&SignRequest {
            channel_name: channel.clone(),
            user_id,
            user_info,
        })
        .map_err(|e| Error::Encode(Arc::new(e)))?;
        let response: SignResponse = self.post(&self.inner.sign_url, body, true).await?;
        Ok(ChannelToken {
            token: response.token,
            expires_at: response.expires_at,
        })
    }

    /// POSTs `body` to `url`, retrying retryable failures when `retry` is set.
    async fn post<R: DeserializeOwned>(
        &self,
        url: &Url,
        body: Vec<u8>,
        retry: bool,
    ) -> Result<R, Error> {
        let inner = &self.inner;
        let mut attempt = 0;
        loop {
            let err = match self.attempt(url, body.clone()).await {
                Ok(r) => return Ok(r),
                Err(e) => e,
            };
            if !retry || attempt >= inner.max_retries || !err.is_retryable() {
                return Err(err);
            }
            let delay = match err.retry_after() {
                // The server asks for more patience than this publisher is configured for:
                // give up now and let the caller see the Retry-After.
                Some(wait) if wait > inner.backoff.max() => return Err(err),
                Some(wait) => wait,
                None => inner.backoff.delay(attempt, rand::random()),
            };
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    async fn attempt<R: DeserializeOwned>(&self, url: &Url, body: Vec<u8>) -> Result<R, Error> {
        let inner = &self.inner;
        let request_error = |e: reqwest::Error| {
            if e.is_timeout() {
                Error::Timeout(format!("after {:?} waiting for POST {url}", inner.timeout))
            } else {
                Error::transport(format!("POST {url}"), &e)
            }
        };
        let response = inner
            .client
            .post(url.clone())
            .header(AUTHORIZATION, inner.authorization.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(request_error)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = response.bytes().await.map_err(request_error)?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                Error::Protocol(format!("unexpected answer to POST {url} ({status}): {e}"))
            });
        }
        Err(http_error(status.as_u16(), &bytes, retry_after))
    }
}

/// Maps an error response to [`Error::Api`] (Herald's error body) or [`Error::Http`].
pub(crate) fn http_error(status: u16, body: &[u8], retry_after: Option<Duration>) -> Error {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => Error::Api {
            status,
            code: b.error.code,
            message: b.error.message,
            retry_after,
        },
        Err(_) => Error::Http {
            status,
            body: String::from_utf8_lossy(body)
                .chars()
                .take(MAX_ERROR_BODY_CHARS)
                .collect(),
            retry_after,
        },
    }
}

fn channel_of_kind(name: &str, expected: ChannelKind) -> Result<ChannelName, Error> {
    let channel = ChannelName::parse(name)?;
    if channel.kind() != expected {
        return Err(Error::WrongChannelKind { channel, expected });
    }
    Ok(channel)
}

impl PublisherBuilder {
    /// A builder configured from the environment:
    ///
    /// * `HERALD_URL`: the server's base URL (required);
    /// * `HERALD_API_KEY`: the API key, or
    /// * `HERALD_API_KEY_FILE`: a file holding it (a mounted secret); surrounding whitespace
    ///   is trimmed. Setting both is an error.
    ///
    /// Empty variables count as unset. Errors are [`Error::Config`] and never contain the key.
    ///
    /// ```no_run
    /// use herald_sdk::PublisherBuilder;
    /// let publisher = PublisherBuilder::from_env()?.retry_publish(true).build()?;
    /// # Ok::<(), herald_sdk::Error>(())
    /// ```
    pub fn from_env() -> Result<PublisherBuilder, Error> {
        Self::from_lookup(|name| std::env::var(name))
    }

    fn from_lookup(
        get: impl Fn(&str) -> Result<String, std::env::VarError>,
    ) -> Result<PublisherBuilder, Error> {
        let var = |name: &str| match get(name) {
            Ok(v) if v.trim().is_empty() => Ok(None),
            Ok(v) => Ok(Some(Zeroizing::new(v))),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(Error::Config(format!("{name} is not valid UTF-8")))
            }
        };
        let url = var("HERALD_URL")?
            .ok_or_else(|| Error::Config("HERALD_URL is not set".into()))?
            .trim()
            .to_owned();
        let key = match (var("HERALD_API_KEY")?, var("HERALD_API_KEY_FILE")?) {
            (Some(_), Some(_)) => {
                return Err(Error::Config(
                    "both HERALD_API_KEY and HERALD_API_KEY_FILE are set; set one".into(),
                ));
            }
            (Some(key), None) => key,
            (None, Some(path)) => {
                let path = path.trim();
                Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                    Error::Config(format!("reading HERALD_API_KEY_FILE {path}: {e}"))
                })?)
            }
            (None, None) => {
                return Err(Error::Config(
                    "set HERALD_API_KEY or HERALD_API_KEY_FILE".into(),
                ));
            }
        };
        Ok(Publisher::builder(url, key.trim()))
    }

    /// Timeout of one HTTP attempt, from sending the request to reading the whole answer.
    ///
    /// ```
    /// # let key = format!("hk_0123456789abcdef_{}", "ab".repeat(32));
    /// let builder = herald_sdk::Publisher::builder("http://127.0.0.1:8080", key)
    ///     .timeout(std::time::Duration::from_secs(3));
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Timeout of establishing a TCP (and TLS) connection.
    ///
    /// ```
    /// # let key = format!("hk_0123456789abcdef_{}", "ab".repeat(32));
    /// let builder = herald_sdk::Publisher::builder("http://127.0.0.1:8080", key)
    ///     .connect_timeout(std::time::Duration::from_secs(1));
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How many times a failed call is retried (0 disables retries). Only connection
    /// failures, timeouts, HTTP 429 and 5xx are retried, never another 4xx.
    ///
    /// ```
    /// # let key = format!("hk_0123456789abcdef_{}", "ab".repeat(32));
    /// let no_retries = herald_sdk::Publisher::builder("http://127.0.0.1:8080", key).max_retries(0);
    /// ```
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }

    /// Delay before the first retry and the longest delay. Each retry waits about twice as
    /// long as the previous one, with random jitter (between half and all of the delay). A
    /// 429 answer's `Retry-After` (in seconds) replaces the computed delay; one longer than
    /// `max` ends the retries and the error carries it ([`Error::retry_after`]).
    ///
    /// ```
    /// use std::time::Duration;
    /// # let key = format!("hk_0123456789abcdef_{}", "ab".repeat(32));
    /// let builder = herald_sdk::Publisher::builder("http://127.0.0.1:8080", key)
    ///     .retry_backoff(Duration::from_millis(50), Duration::from_secs(1));
    /// ```
    pub fn retry_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff = Backoff::new(initial, max);
        self
    }

    /// Whether [`publish_message`](Channel::publish_message) is retried too (default:
    /// `false`).
    ///
    /// Publishing is **not idempotent**: when a connection breaks or times out after the
    /// request was sent, or the server answers 5xx, the event may already have reached
    /// subscribers, and a retry would deliver it twice. So by default a publish is tried
    /// once and the error returned ([`Error::is_retryable`] tells whether retrying makes
    /// sense). Turn this on when subscribers tolerate duplicates (for example they dedupe on
    /// their own ids in the payload). Token signing is always retried: a duplicate token is
    /// harmless.
    ///
    /// ```
    /// # let key = format!("hk_0123456789abcdef_{}", "ab".repeat(32));
    /// let at_least_once = herald_sdk::Publisher::builder("http://127.0.0.1:8080", key)
    ///     .retry_publish(true);
    /// ```
    pub fn retry_publish(mut self, retry: bool) -> Self {
        self.retry_publish = retry;
        self
    }

    /// Largest payload, as JSON bytes, that [`publish_message`](Channel::publish_message)
    /// sends; larger ones fail early with [`Error::PayloadTooLarge`]. Default: 64 KiB, the
    /// server's default limit; match it to the server's `--max-payload-bytes`.
    ///
    /// ```
    /// # let key = format!("hk_0123456789abcdef_{}", "ab".repeat(32));
    /// let builder = herald_sdk::Publisher::builder("http://127.0.0.1:8080", key)
    ///     .max_payload_bytes(256 * 1024);
    /// ```
    pub fn max_payload_bytes(mut self, limit: usize) -> Self {
        self.max_payload_bytes = limit;
        self
    }

    /// Checks the settings and builds the publisher. Fails with [`Error::Config`] when the
    /// URL is not an `http(s)` URL or the API key is not shaped like `hk_<id>_<secret>`.
    ///
    /// ```
    /// use herald_sdk::{Error, Publisher};
    /// let err = Publisher::builder("http://127.0.0.1:8080", "not-a-key").build().unwrap_err();
    /// assert!(matches!(err, Error::Config(_)));
    /// ```
    pub fn build(self) -> Result<Publisher, Error> {
        let base_url = http_base_url(&self.base_url)?;
        let join = |path: &str| {
            base_url
                .join(path)
                .map_err(|e| Error::Config(format!("invalid base URL {}: {e}", self.base_url)))
        };
        let publish_url = join(PUBLISH_PATH)?;
        let sign_url = join(SIGN_PATH)?;
        let key = ApiKeyToken::parse(self.api_key.expose()).ok_or_else(|| {
            Error::Config("the API key is malformed: expected hk_<16 hex>_<64 hex>".into())
        })?;
        let header = Zeroizing::new(format!("Bearer {}", self.api_key.expose()));
        let mut authorization = HeaderValue::from_str(&header)
            .map_err(|_| Error::Config("the API key holds invalid characters".into()))?;
        authorization.set_sensitive(true);
        let client = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout)
            .user_agent(USER_AGENT)
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {}", crate::error::chain(&e))))?;
        Ok(Publisher {
            inner: Arc::new(Inner {
                client,
                base_url,
                publish_url,
                sign_url,
                key_id: key.id().clone(),
                authorization,
                max_retries: self.max_retries,
                backoff: self.backoff,
                retry_publish: self.retry_publish,
                max_payload_bytes: self.max_payload_bytes,
                timeout: self.timeout,
            }),
        })
    }
}

/// Parses an `http(s)` base URL and makes sure its path ends with `/`, so endpoint paths join
/// below it (a server mounted at `https://example.com/herald/` keeps its prefix).
fn http_base_url(raw: &str) -> Result<Url, Error> {
    let mut url =
        Url::parse(raw.trim()).map_err(|e| Error::Config(format!("invalid URL {raw:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::Config(format!(
            "invalid URL {raw:?}: expected http:// or https://"
        )));
    }
    url.set_query(None);
    url.set_fragment(None);
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// A public channel to publish to; made by [`Publisher::build_channel`].
///
/// ```no_run
/// # async fn run(publisher: herald_sdk::Publisher) -> Result<(), herald_sdk::Error> {
/// let orders = publisher.build_channel("orders")?;
/// orders.publish_message(&serde_json::json!({"status": "shipped"})).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Channel {
    publisher: Publisher,
    name: ChannelName,
}

impl Channel {
    /// The channel's name.
    ///
    /// ```
    /// # let key = format!("hk_0123456789abcdef_{}", "ab".repeat(32));
    /// # let publisher = herald_sdk::Publisher::builder("http://127.0.0.1:8080", key).build()?;
    /// assert_eq!(publisher.build_channel("orders")?.name().as_str(), "orders");
    /// # Ok::<(), herald_sdk::Error>(())
    /// ```
    pub fn name(&self) -> &ChannelName {
        &self.name
    }

    /// Publishes `payload` (anything `Serialize`, sent as JSON) to every subscriber of the
    /// channel and returns the message id (also in the subscribers' `event.id`).
    ///
    /// Needs the `publish_event` scope. Not retried unless
    /// [`retry_publish`](PublisherBuilder::retry_publish) is on.
    ///
    /// ```no_run
    /// # async fn run(publisher: herald_sdk::Publisher) -> Result<(), herald_sdk::Error> {
    /// #[derive(serde::Serialize)]
    /// struct Shipped { order: u64 }
    ///
    /// let id = publisher.build_channel("orders")?.publish_message(&Shipped { order: 42 }).await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish_message<P: Serialize + ?Sized>(
        &self,
        payload: &P,
    ) -> Result<String, Error> {
        self.publisher.publish(&self.name, payload).await
    }
}

/// A private channel (`private-…`): publish to it, and sign tokens that let one client listen;
/// made by [`Publisher::build_private_channel`].
///
/// ```no_run
/// # async fn run(publisher: herald_sdk::Publisher) -> Result<(), herald_sdk::Error> {
/// let inbox = publisher.build_private_channel("private-user-42")?;
/// let token = inbox.get_client_auth_token().await?; // hand token.token to user 42's client
/// inbox.publish_message(&serde_json::json!({"text": "hello"})).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PrivateChannel {
    publisher: Publisher,
    name: ChannelName,
}

impl PrivateChannel {
    /// The channel's name.
    ///
    /// ```
    /// # let key = format!("hk_0123456789abcdef_{}", "ab".repeat(32));
    /// # let publisher = herald_sdk::Publisher::builder("http://127.0.0.1:8080", key).build()?;
    /// let inbox = publisher.build_private_channel("private-u1")?;
    /// assert!(inbox.name().is_private());
    /// # Ok::<(), herald_sdk::Error>(())
    /// ```
    pub fn name(&self) -> &ChannelName {
        &self.name
    }

    /// Publishes `payload` to the channel's listeners; see [`Channel::publish_message`].
    ///
    /// ```no_run
    /// # async fn run(publisher: herald_sdk::Publisher) -> Result<(), herald_sdk::Error> {
    /// let inbox = publisher.build_private_channel("private-user-42")?;
    /// let id = inbox.publish_message("you have mail").await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish_message<P: Serialize + ?Sized>(
        &self,
        payload: &P,
    ) -> Result<String, Error> {
        self.publisher.publish(&self.name, payload).await
    }

    /// Signs a token that lets a client listen to this channel (`POST /v1/publishers/sign`;
    /// needs the `sign_token` scope). Hand it to the one client that may listen; it stops
    /// opening the channel at [`ChannelToken::expires_at`], or when the API key is deleted.
    ///
    /// Retried on connection errors, 429 and 5xx (signing twice is harmless).
    ///
    /// ```no_run
    /// # async fn run(publisher: herald_sdk::Publisher) -> Result<(), herald_sdk::Error> {
    /// let token = publisher
    ///     .build_private_channel("private-user-42")?
    ///     .get_client_auth_token()
    ///     .await?;
    /// println!("valid until {}", token.expires_at);
    /// # Ok(()) }
    /// ```
    pub async fn get_client_auth_token(&self) -> Result<ChannelToken, Error> {
        self.publisher.sign(&self.name, None).await
    }
}

/// A presence channel (`presence-…`): publish to it, and sign tokens that let one member
/// listen; made by [`Publisher::build_presence_channel`]. Every listener sees who else
/// listens: the `user_id` and `user_info` its token was signed with (two clients with one
/// user id are one member).
///
/// ```no_run
/// # async fn run(publisher: herald_sdk::Publisher) -> Result<(), herald_sdk::Error> {
/// let room = publisher.build_presence_channel("presence-room-7")?;
/// let info = serde_json::json!({"name": "Ann"});
/// let token = room.get_client_auth_token("user-42", Some(&info)).await?;
/// // hand token.token to user 42's client, which listens to presence-room-7 with it
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PresenceChannel {
    publisher: Publisher,
    name: ChannelName,
}

impl PresenceChannel {
    /// The channel's name.
    ///
    /// ```
    /// # let key = format!("hk_0123456789abcdef_{}", "ab".repeat(32));
    /// # let publisher = herald_sdk::Publisher::builder("http://127.0.0.1:8080", key).build()?;
    /// let room = publisher.build_presence_channel("presence-room-7")?;
    /// assert!(room.name().is_presence());
    /// # Ok::<(), herald_sdk::Error>(())
    /// ```
    pub fn name(&self) -> &ChannelName {
        &self.name
    }

    /// Publishes `payload` to the channel's listeners; see [`Channel::publish_message`].
    ///
    /// ```no_run
    /// # async fn run(room: herald_sdk::PresenceChannel) -> Result<(), herald_sdk::Error> {
    /// room.publish_message(&serde_json::json!({"text": "hello, room"})).await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish_message<P: Serialize + ?Sized>(
        &self,
        payload: &P,
    ) -> Result<String, Error> {
        self.publisher.publish(&self.name, payload).await
    }

    /// Signs a token that lets the member `user_id` listen to this channel
    /// (`POST /v1/publishers/sign` with `userId` and `userInfo`; needs the `sign_token`
    /// scope). `user_info`, when given, is what the other members see of this one: a JSON
    /// object of at most 1 KiB. Both are checked before sending ([`Error::InvalidMember`]).
    ///
    /// Retried on connection errors, 429 and 5xx (signing twice is harmless).
    ///
    /// ```no_run
    /// # async fn run(room: herald_sdk::PresenceChannel) -> Result<(), herald_sdk::Error> {
    /// let token = room.get_client_auth_token("user-42", None).await?;
    /// # Ok(()) }
    /// ```
    pub async fn get_client_auth_token(
        &self,
        user_id: &str,
        user_info: Option<&serde_json::Value>,
    ) -> Result<ChannelToken, Error> {
        let invalid = |r: herald_protocol::Refusal| Error::InvalidMember {
            code: r.code,
            message: r.message,
        };
        let user_id = UserId::parse(user_id).map_err(invalid)?;
        let user_info = user_info
            .map(MemberInfo::from_value)
            .transpose()
            .map_err(invalid)?;
        self.publisher
            .sign(&self.name, Some((user_id, user_info)))
            .await
    }
}

/// A signed private-channel token and its expiry. Its `Debug` output hides the token.
///
/// ```no_run
/// # async fn run(inbox: herald_sdk::PrivateChannel) -> Result<(), herald_sdk::Error> {
/// let token = inbox.get_client_auth_token().await?;
/// let jwt: String = token.token; // what the client passes to `listen`
/// # Ok(()) }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ChannelToken {
    /// The token (a JWT; treat it as opaque).
    pub token: String,
    /// When the token stops opening the channel.
    pub expires_at: OffsetDateTime,
}

impl fmt::Debug for ChannelToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelToken")
            .field("token", &"***")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::env::VarError;

    fn key() -> String {
        format!("hk_0123456789abcdef_{}", "ab".repeat(32))
    }

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Result<String, VarError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned().ok_or(VarError::NotPresent)
    }

    #[test]
    fn urls_keep_prefixes() -> Result<(), Error> {
        let p = Publisher::builder("https://example.com/herald", key()).build()?;
        assert_eq!(
            p.inner.publish_url.as_str(),
            "https://example.com/herald/v1/publishers/events/publish"
        );
        let p = Publisher::builder("http://127.0.0.1:8080", key()).build()?;
        assert_eq!(
            p.inner.sign_url.as_str(),
            "http://127.0.0.1:8080/v1/publishers/sign"
        );
        for bad in ["ftp://example.com", "not a url", "ws://example.com"] {
            assert!(matches!(
                Publisher::builder(bad, key()).build(),
                Err(Error::Config(_))
            ));
        }
        Ok(())
    }

    #[test]
    fn key_never_in_debug_or_errors() -> Result<(), Error> {
        let builder = Publisher::builder("http://127.0.0.1:8080", key());
        assert!(!format!("{builder:?}").contains("abab"));
        let p = builder.build()?;
        let shown = format!("{p:?}");
        assert!(!shown.contains("abab"), "{shown}");
        assert!(shown.contains("0123456789abcdef"), "{shown}");
        let bad = format!("hk_0123456789abcdef_{}", "zz".repeat(32));
        let err = Publisher::builder("http://127.0.0.1:8080", bad.clone())
            .build()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(!err.contains("zzzz") && !err.is_empty(), "{err}");
        Ok(())
    }

    #[test]
    fn channel_kinds_checked_locally() -> Result<(), Error> {
        let p = Publisher::builder("http://127.0.0.1:8080", key()).build()?;
        assert!(p.build_channel("orders").is_ok());
        assert!(p.build_private_channel("private-x").is_ok());
        let err = p.build_private_channel("orders").err();
        assert!(matches!(
            err,
            Some(Error::WrongChannelKind {
                expected: ChannelKind::Private,
                ..
            })
        ));
        assert_eq!(
            err.and_then(|e| e.code()),
            Some(herald_protocol::ErrorCode::ChannelNotPrivate)
        );
        assert!(matches!(
            p.build_channel("private-x"),
            Err(Error::WrongChannelKind {
                expected: ChannelKind::Public,
                ..
            })
        ));
        assert_eq!(
            p.build_channel("privateer").err().and_then(|e| e.code()),
            Some(herald_protocol::ErrorCode::AmbiguousChannelName)
        );
        assert!(p.build_presence_channel("presence-x").is_ok());
        assert_eq!(
            p.build_presence_channel("private-x")
                .err()
                .and_then(|e| e.code()),
            Some(herald_protocol::ErrorCode::NotPresenceChannel)
        );
        Ok(())
    }

    #[tokio::test]
    async fn presence_members_are_checked_before_sending() -> Result<(), Error> {
        // Nothing listens on port 9: a request that went out would be a transport error.
        let p = Publisher::builder("http://127.0.0.1:9", key()).build()?;
        let room = p.build_presence_channel("presence-x")?;
        let code = |r: Result<ChannelToken, Error>| r.err().and_then(|e| e.code());
        use herald_protocol::ErrorCode::{InvalidBody, InvalidUserId, PresenceInfoTooLarge};
        assert_eq!(
            code(room.get_client_auth_token("", None).await),
            Some(InvalidUserId)
        );
        let list = serde_json::json!([1]);
        assert_eq!(
            code(room.get_client_auth_token("u1", Some(&list)).await),
            Some(InvalidBody)
        );
        let big = serde_json::json!({ "n": "x".repeat(2000) });
        assert_eq!(
            code(room.get_client_auth_token("u1", Some(&big)).await),
            Some(PresenceInfoTooLarge)
        );
        Ok(())
    }

    #[test]
    fn env_config() -> Result<(), Box<dyn std::error::Error>> {
        let b = PublisherBuilder::from_lookup(lookup(&[
            ("HERALD_URL", "http://h:1"),
            ("HERALD_API_KEY", &key()),
        ]))?;
        assert_eq!(b.base_url, "http://h:1");
        assert_eq!(b.api_key.expose(), key());

        let dir = tempfile::tempdir()?;
        let path = dir.path().join("key");
        std::fs::write(&path, format!("  {}\n\n", key()))?;
        let path = path.to_string_lossy().into_owned();
        let b = PublisherBuilder::from_lookup(lookup(&[
            ("HERALD_URL", "http://h:1"),
            ("HERALD_API_KEY_FILE", &path),
        ]))?;
        assert_eq!(b.api_key.expose(), key());
        assert!(b.build().is_ok());

        let config_err = |vars: &[(&str, &str)]| {
            matches!(
                PublisherBuilder::from_lookup(lookup(vars)),
                Err(Error::Config(_))
            )
        };
        assert!(config_err(&[("HERALD_API_KEY", "k")]));
        assert!(config_err(&[("HERALD_URL", "http://h:1")]));
        assert!(config_err(&[
            ("HERALD_URL", "http://h:1"),
            ("HERALD_API_KEY", " ")
        ]));
        assert!(config_err(&[
            ("HERALD_URL", "http://h:1"),
            ("HERALD_API_KEY", "k"),
            ("HERALD_API_KEY_FILE", &path)
        ]));
        assert!(config_err(&[
            ("HERALD_URL", "http://h:1"),
            ("HERALD_API_KEY_FILE", "/nonexistent/herald-key")
        ]));
        Ok(())
    }

    #[test]
    fn error_bodies() {
        let e = http_error(
            403,
            br#"{"error":{"code":"missing_scope","message":"no"}}"#,
            None,
        );
        assert!(matches!(
            e,
            Error::Api {
                status: 403,
                code: herald_protocol::ErrorCode::MissingScope,
                ..
            }
        ));
        let e = http_error(
            502,
            b"<html>bad gateway</html>",
            Some(Duration::from_secs(1)),
        );
        assert!(matches!(e, Error::Http { status: 502, .. }));
        assert!(e.is_retryable());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
        let e = http_error(
            400,
            br#"{"error":{"code":"brand_new","message":"?"}}"#,
            None,
        );
        assert!(matches!(e, Error::Http { status: 400, .. }));
        assert!(!e.is_retryable());
    }
}
