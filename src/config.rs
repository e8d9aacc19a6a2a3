//! Settings: an optional TOML file, overridden key by key by `LEADSYNC_<SECTION>__<KEY>`
//! environment variables, then checked without touching the network.
//!
//! Every key has a default except `source.url`, so a container can be configured by the
//! environment alone. An unknown key or a bad value is an error that names the key and where
//! it came from; the database URL is a secret and never appears in any message.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// Prefix of every environment variable leadsync reads as a setting.
pub const ENV_PREFIX: &str = "LEADSYNC_";
/// Separates the section from the key in an environment variable name.
pub const ENV_SEPARATOR: &str = "__";
/// Environment variables with the prefix that are not settings.
const ENV_NOT_SETTINGS: &[&str] = &["LEADSYNC_CONFIG", "LEADSYNC_LOG"];

/// Every section and its keys: the one list that unknown keys are checked against.
pub const KEYS: &[(&str, &[&str])] = &[
    (
        "source",
        &[
            "url",
            "password_file",
            "allow_unverified_password",
            "schema",
        ],
    ),
    (
        "target",
        &["schema", "defer_legacy_foreign_keys", "lock_timeout_ms"],
    ),
    ("slot", &["name", "status_interval_ms"]),
    ("publication", &["name"]),
    (
        "sync",
        &[
            "delete_mode",
            "reverse",
            "on_error",
            "max_batch_changes",
            "max_batch_delay_ms",
        ],
    ),
    ("transform", &["product_rules", "case_insensitive"]),
    ("metrics", &["listen", "history_every_seconds"]),
    ("control", &["pidfile"]),
    ("log", &["format", "level", "status_every_seconds"]),
    ("dlq", &["retention_days"]),
];

/// A setting could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    #[error("unknown setting `{key}` ({origin}); known settings: {known}")]
    UnknownKey {
        key: String,
        origin: String,
        known: String,
    },
    #[error(
        "environment variable {name} is not of the form LEADSYNC_<SECTION>__<KEY> \
         (e.g. LEADSYNC_SOURCE__URL)"
    )]
    BadEnvName { name: String },
    #[error("setting {0}")]
    BadValue(String),
    #[error("setting `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

/// All settings. Sections mirror the TOML file and the environment variable names.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub source: SourceSettings,
    pub target: TargetSettings,
    pub slot: SlotSettings,
    pub publication: PublicationSettings,
    pub sync: SyncSettings,
    pub transform: TransformSettings,
    pub metrics: MetricsSettings,
    pub control: ControlSettings,
    pub log: LogSettings,
    pub dlq: DlqSettings,
}

/// Dead letters: rejected changes with the contact's data.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DlqSettings {
    /// Resolved (replayed or discarded) dead letters are deleted, with the personal data
    /// they hold, once resolved this many days ago; 0 keeps them. Pending ones always stay.
    pub retention_days: u32,
}

impl Default for DlqSettings {
    fn default() -> Self {
        DlqSettings { retention_days: 30 }
    }
}

/// How `leadsync ctl` finds the daemon.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlSettings {
    /// The daemon's pidfile; default `<slot name>.pid` in a private directory
    /// (`$XDG_RUNTIME_DIR/leadsync`, else `<temp dir>/leadsync-<uid>`).
    pub pidfile: Option<String>,
}

/// The legacy database (which also holds the target tables, SPEC §2).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceSettings {
    /// `postgres://user:password@host:port/database?sslmode=…`. Required; never logged.
    pub url: Option<SecretString>,
    /// A file holding the password (its first line), so that it need not sit in the URL or
    /// the environment: a mounted Secret, say. The URL then has none.
    pub password_file: Option<PathBuf>,
    /// Send the password to a server whose certificate is not verified (`sslmode` below
    /// `verify-ca`, not local). Off: such a URL is refused, since a man in the middle would
    /// receive the password.
    pub allow_unverified_password: bool,
    /// Schema of the legacy tables `contacts`, `contact_custom_fields`, `custom_fields`,
    /// `workspaces` and `workspace_users`.
    pub schema: String,
}

impl Default for SourceSettings {
    fn default() -> Self {
        SourceSettings {
            url: None,
            password_file: None,
            allow_unverified_password: false,
            schema: "public".into(),
        }
    }
}

/// Where the lead-centric tables live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TargetSettings {
    /// Schema of `customers`, `leads`, `appointments` and their custom-field tables.
    pub schema: String,
    /// The first load drops the target tables' foreign keys into `workspaces`,
    /// `custom_fields` and `auth.users` in a short transaction before it copies and adds
    /// them back, validated, in its own commit, instead of checking them row by row.
    pub defer_legacy_foreign_keys: bool,
    /// How long (milliseconds) leadsync waits for a lock on a legacy table before it gives
    /// the lock up and asks again after a pause, so the application never queues behind it
    /// for longer.
    pub lock_timeout_ms: u64,
}

impl Default for TargetSettings {
    fn default() -> Self {
        TargetSettings {
            schema: "public".into(),
            defer_legacy_foreign_keys: true,
            lock_timeout_ms: 500,
        }
    }
}

/// The logical replication slot, which also names the replication origin.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlotSettings {
    pub name: String,
    /// How often the processed position is reported to the server. Keep it well under half
    /// of the server's `wal_sender_timeout`, or a busy daemon is disconnected.
    pub status_interval_ms: u64,
}

impl Default for SlotSettings {
    fn default() -> Self {
        SlotSettings {
            name: "leadsync".into(),
            status_interval_ms: 1000,
        }
    }
}

/// The publication over the legacy tables.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublicationSettings {
    pub name: String,
}

impl Default for PublicationSettings {
    fn default() -> Self {
        PublicationSettings {
            name: "leadsync".into(),
        }
    }
}

/// What happens to rows that leave the projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeleteMode {
    /// Keep the row with its last projected values and set `deleted_at`.
    Soft,
    /// Delete the row (and, through the schema's cascades, what hangs on it).
    Hard,
}

/// What happens when the target rejects a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Park the row in `leadsync.dead_letters` and go on.
    DeadLetter,
    /// Stop the daemon with the error.
    Stop,
}

/// How changes are carried over.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncSettings {
    pub delete_mode: DeleteMode,
    /// Write edits of owned customers back to their contacts (SPEC §4).
    pub reverse: bool,
    pub on_error: OnError,
    /// Under load, several source transactions commit as one target transaction: at most
    /// this many changes in one.
    pub max_batch_changes: usize,
    /// …and open at most this long (milliseconds). A lone transaction commits at once.
    pub max_batch_delay_ms: u64,
}

impl Default for SyncSettings {
    fn default() -> Self {
        SyncSettings {
            delete_mode: DeleteMode::Soft,
            reverse: true,
            on_error: OnError::DeadLetter,
            max_batch_changes: 20_000,
            max_batch_delay_ms: 200,
        }
    }
}

/// One product rule: a contact whose `tags` contain `needle` gets `product`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductRule {
    pub needle: String,
    pub product: String,
}

/// The projection's tunables.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransformSettings {
    /// Ordered `needle=PRODUCT` rules; the first whose needle is a substring of `tags` wins.
    /// In TOML a string `"solar=SOLAR,hvac=HVAC"` or a list `["solar=SOLAR", "hvac=HVAC"]`.
    #[serde(deserialize_with = "deserialize_rules")]
    pub product_rules: Vec<ProductRule>,
    /// Match needles regardless of case.
    pub case_insensitive: bool,
}

impl Default for TransformSettings {
    fn default() -> Self {
        TransformSettings {
            product_rules: parse_rules(DEFAULT_PRODUCT_RULES).unwrap_or_default(),
            case_insensitive: false,
        }
    }
}

/// The guide's product mapping.
pub const DEFAULT_PRODUCT_RULES: &str = "solar=SOLAR,hvac=HVAC,roofing=ROOFING";

/// The HTTP endpoint for `/metrics`, `/healthz`, `/readyz` and `/status`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    pub listen: String,
    /// How often the active daemon keeps a sample of its lag and throughput in
    /// `leadsync.samples` (the history `report --html` charts); 0: never.
    pub history_every_seconds: u64,
}

/// Default HTTP listen address: loopback only.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9187";

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings {
            listen: DEFAULT_METRICS_LISTEN.into(),
            history_every_seconds: 60,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `leadsync=debug,info`.
    pub level: String,
    /// How often `run` logs a status line (state, applied/s, lag, backlog, ETA); 0: never.
    pub status_every_seconds: u64,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Text,
            level: "info".into(),
            status_every_seconds: 30,
        }
    }
}

/// Parses `solar=SOLAR,hvac=HVAC` into ordered rules.
pub fn parse_rules(text: &str) -> Result<Vec<ProductRule>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(parse_rule)
        .collect()
}

fn parse_rule(part: &str) -> Result<ProductRule, String> {
    let (needle, product) = part
        .split_once('=')
        .ok_or_else(|| format!("rule `{part}` is not of the form needle=PRODUCT"))?;
    let (needle, product) = (needle.trim(), product.trim());
    if needle.is_empty() || product.is_empty() {
        return Err(format!("rule `{part}` has an empty needle or product"));
    }
    Ok(ProductRule {
        needle: needle.to_owned(),
        product: product.to_owned(),
    })
}

fn deserialize_rules<'de, D>(deserializer: D) -> Result<Vec<ProductRule>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Rules {
        One(String),
        Many(Vec<String>),
    }
    let rules = match Rules::deserialize(deserializer)? {
        Rules::One(text) => parse_rules(&text),
        Rules::Many(parts) => parts.iter().map(|p| parse_rule(p.trim())).collect(),
    };
    rules.map_err(serde::de::Error::custom)
}

impl Settings {
    /// Reads the file at `path` (if any), then the `LEADSYNC_*` variables of the process.
    pub fn load(path: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_from(path, std::env::vars())
    }

    /// Reads the file at `path` (if any), then the given environment.
    pub fn load_from(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = path {
            if !path.is_file() {
                return Err(ConfigError::File {
                    path: path.to_owned(),
                    reason: "no such file".into(),
                });
            }
            builder = builder
                .add_source(config::File::from(path.to_owned()).format(config::FileFormat::Toml));
        }
        let env = settings_from_env(env)?;
        let origins: HashMap<String, String> = env
            .iter()
            .map(|(key, (var, _))| (key.clone(), format!("from environment variable {var}")))
            .collect();
        // The config crate takes the variables themselves and splits their names.
        let values = env.into_values().collect();
        builder = builder.add_source(
            config::Environment::with_prefix("LEADSYNC")
                .prefix_separator("_")
                .separator(ENV_SEPARATOR)
                .source(Some(values)),
        );
        let config = builder.build().map_err(|e| file_error(path, e))?;
        check_known_keys(&config, path, &origins)?;
        let mut settings = config
            .try_deserialize::<Settings>()
            .map_err(|e| ConfigError::BadValue(e.to_string()))?;
        settings.read_password_file()?;
        if let Some(password) = settings
            .source
            .url
            .as_ref()
            .and_then(|u| crate::db::parse_url(u.expose_secret()).ok())
            .and_then(|u| u.config.get_password().map(|p| p.to_vec()))
        {
            crate::secrets::register(&String::from_utf8_lossy(&password));
        }
        Ok(settings)
    }

    /// What an operator should know about these settings, logged at start: a server that is
    /// not verified, a password sent to it anyway, a password file others can read.
    pub fn startup_warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Some(source) = self
            .source
            .url
            .as_ref()
            .and_then(|u| crate::db::parse_url(u.expose_secret()).ok())
            && let Some(why) = source.unverified()
        {
            warnings.push(format!(
                "the source server is not verified: {why}; a man in the middle could read and \
                 change what leadsync reads and writes. Use sslmode=verify-full with sslrootcert"
            ));
            if source.config.get_password().is_some() {
                warnings.push(
                    "source.allow_unverified_password is on: the password goes to a server \
                     that is not verified"
                        .into(),
                );
            }
        }
        #[cfg(unix)]
        if let Some(path) = &self.source.password_file {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path)
                && meta.permissions().mode() & 0o007 != 0
            {
                warnings.push(format!(
                    "source.password_file {} can be read by every user of this machine: make \
                     it readable by its owner (chmod 0400) or its group only (in Kubernetes, \
                     defaultMode: 0440 with the pod's fsGroup)",
                    path.display()
                ));
            }
        }
        warnings
    }

    /// Puts the password of `source.password_file` into the URL (it is never written out).
    fn read_password_file(&mut self) -> Result<(), ConfigError> {
        let Some(path) = self.source.password_file.clone() else {
            return Ok(());
        };
        let invalid = |reason: String| ConfigError::Invalid {
            key: "source.password_file",
            reason,
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
        let password = text.lines().next().unwrap_or("").to_owned();
        if password.is_empty() {
            return Err(invalid(format!("{} holds no password", path.display())));
        }
        crate::secrets::register(&password);
        let Some(url) = self.source.url.as_ref() else {
            return Ok(());
        };
        let url = url.expose_secret();
        if crate::db::parse_url(url)
            .ok()
            .is_some_and(|u| u.config.get_password().is_some())
        {
            return Err(invalid(
                "source.url has a password too: give it in one place only".into(),
            ));
        }
        let with_password = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let separator = if url.contains('?') { '&' } else { '?' };
            format!(
                "{url}{separator}password={}",
                crate::secrets::url_encoded(&password)
            )
        } else {
            format!(
                "{url} password='{}'",
                password.replace('\\', "\\\\").replace('\'', "\\'")
            )
        };
        self.source.url = Some(SecretString::from(with_password));
        Ok(())
    }

    /// Checks the names leadsync puts into SQL: schemas, publication and slot. Also run
    /// before `setup --print-grants` prints its script.
    pub fn validate_names(&self) -> Result<(), ConfigError> {
        check_identifier("source.schema", &self.source.schema)?;
        check_identifier("target.schema", &self.target.schema)?;
        for (key, schema) in [
            ("source.schema", &self.source.schema),
            ("target.schema", &self.target.schema),
        ] {
            if schema == crate::schema::STATE_SCHEMA {
                return Err(ConfigError::Invalid {
                    key,
                    reason: format!(
                        "`{schema}` is leadsync's own schema (its checkpoint and state, which \
                         teardown drops); the legacy and target tables live elsewhere"
                    ),
                });
            }
        }
        check_identifier("publication.name", &self.publication.name)?;
        check_slot_name(&self.slot.name)
    }

    /// Checks every value that can be checked without a database. Run before connecting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let url = self.source.url.as_ref().ok_or(ConfigError::Invalid {
            key: "source.url",
            reason: "not set; give it in the configuration file or as LEADSYNC_SOURCE__URL".into(),
        })?;
        let source =
            crate::db::parse_url(url.expose_secret()).map_err(|e| ConfigError::Invalid {
                key: "source.url",
                reason: format!("`{}`: {e}", redact_url(url.expose_secret())),
            })?;
        if let Some(why) = source.password_unprotected()
            && !self.source.allow_unverified_password
        {
            return Err(ConfigError::Invalid {
                key: "source.url",
                reason: format!(
                    "leadsync sends its password only to a server it has verified, and {why}: \
                     whoever answers in the server's place could take the password. Use \
                     sslmode=verify-full with sslrootcert=<the CA that issued the server's \
                     certificate> (or sslrootcert=system for a public CA), or connect through \
                     a local socket or proxy. To send it anyway, knowing this, set \
                     source.allow_unverified_password = true"
                ),
            });
        }
        self.validate_names()?;
        if self.transform.product_rules.is_empty() {
            return Err(ConfigError::Invalid {
                key: "transform.product_rules",
                reason: "no rules; give at least one needle=PRODUCT".into(),
            });
        }
        if self.slot.status_interval_ms == 0 {
            return Err(ConfigError::Invalid {
                key: "slot.status_interval_ms",
                reason: "must be at least 1".into(),
            });
        }
        if self.target.lock_timeout_ms == 0 {
            return Err(ConfigError::Invalid {
                key: "target.lock_timeout_ms",
                reason: "must be at least 1 (0 would wait for a lock without limit)".into(),
            });
        }
        if self.sync.max_batch_changes == 0 {
            return Err(ConfigError::Invalid {
                key: "sync.max_batch_changes",
                reason: "must be at least 1".into(),
            });
        }
        self.metrics_addr()?;
        tracing_subscriber::EnvFilter::try_new(&self.log.level).map_err(|e| {
            ConfigError::Invalid {
                key: "log.level",
                reason: format!("`{}` is not a log filter: {e}", self.log.level),
            }
        })?;
        Ok(())
    }

    /// The parsed `metrics.listen` address.
    pub fn metrics_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.metrics
            .listen
            .parse()
            .map_err(|_| ConfigError::Invalid {
                key: "metrics.listen",
                reason: format!(
                    "`{}` is not an address such as 127.0.0.1:9187",
                    self.metrics.listen
                ),
            })
    }

    /// The source URL. Only call after [`Settings::validate`].
    pub fn source_url(&self) -> &SecretString {
        self.source
            .url
            .as_ref()
            .expect("validate() checks that source.url is set")
    }

    /// The replication origin that checkpoints the slot's progress: named after the slot.
    pub fn origin_name(&self) -> &str {
        &self.slot.name
    }
}

/// The settings for a log line: every value, the URL without its password.
impl fmt::Display for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Rebuilt from the parsed settings: nothing of the URL's text is shown.
        let url = match self
            .source
            .url
            .as_ref()
            .map(|u| crate::db::parse_url(u.expose_secret()))
        {
            None => "(unset)".to_owned(),
            Some(Ok(source)) => format!(
                "{}{} sslmode={}",
                crate::db::describe_target(&source.config),
                if source.config.get_password().is_some() {
                    " (password ***)"
                } else {
                    ""
                },
                source.tls.mode.as_str()
            ),
            Some(Err(_)) => "(cannot be read; not shown)".to_owned(),
        };
        let rules: Vec<String> = self
            .transform
            .product_rules
            .iter()
            .map(|r| format!("{}={}", r.needle, r.product))
            .collect();
        write!(
            f,
            "source.url={url} source.schema={} target.schema={} \
             target.defer_legacy_foreign_keys={} target.lock_timeout_ms={} slot.name={} \
             publication.name={} sync.delete_mode={:?} sync.reverse={} sync.on_error={:?} \
             transform.product_rules={} transform.case_insensitive={} metrics.listen={} \
             log.format={:?}",
            self.source.schema,
            self.target.schema,
            self.target.defer_legacy_foreign_keys,
            self.target.lock_timeout_ms,
            self.slot.name,
            self.publication.name,
            self.sync.delete_mode,
            self.sync.reverse,
            self.sync.on_error,
            rules.join(","),
            self.transform.case_insensitive,
            self.metrics.listen,
            self.log.format,
        )
    }
}

/// `LEADSYNC_SLOT__NAME=x` → `slot.name` ↦ (`LEADSYNC_SLOT__NAME`, `x`).
fn settings_from_env(
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<HashMap<String, (String, String)>, ConfigError> {
    let mut out = HashMap::new();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if ENV_NOT_SETTINGS.contains(&name.as_str()) {
            continue;
        }
        let Some((section, key)) = rest.split_once(ENV_SEPARATOR) else {
            return Err(ConfigError::BadEnvName { name });
        };
        if section.is_empty() || key.is_empty() || key.contains(ENV_SEPARATOR) {
            return Err(ConfigError::BadEnvName { name });
        }
        let dotted = format!("{}.{}", section.to_lowercase(), key.to_lowercase());
        out.insert(dotted, (name, value));
    }
    Ok(out)
}

fn file_error(path: Option<&Path>, err: config::ConfigError) -> ConfigError {
    match path {
        Some(path) => ConfigError::File {
            path: path.to_owned(),
            reason: err.to_string(),
        },
        None => ConfigError::BadValue(err.to_string()),
    }
}

fn check_known_keys(
    config: &config::Config,
    path: Option<&Path>,
    env_origins: &HashMap<String, String>,
) -> Result<(), ConfigError> {
    let table = config
        .clone()
        .try_deserialize::<HashMap<String, config::Value>>()
        .map_err(|e| ConfigError::BadValue(e.to_string()))?;
    let origin_of = |key: &str| {
        env_origins.get(key).cloned().unwrap_or_else(|| match path {
            Some(p) => format!("in {}", p.display()),
            None => "in the configuration".into(),
        })
    };
    let all_known = || {
        KEYS.iter()
            .flat_map(|(s, keys)| keys.iter().map(move |k| format!("{s}.{k}")))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut sections: Vec<_> = table.into_iter().collect();
    sections.sort_by(|a, b| a.0.cmp(&b.0));
    for (section, value) in sections {
        let Some((_, keys)) = KEYS.iter().find(|(s, _)| *s == section) else {
            return Err(ConfigError::UnknownKey {
                origin: origin_of(&section),
                key: section,
                known: all_known(),
            });
        };
        let Ok(inner) = value.clone().into_table() else {
            return Err(ConfigError::BadValue(format!(
                "`{section}` ({}) must be a section with keys {}",
                origin_of(&section),
                keys.join(", ")
            )));
        };
        let mut inner: Vec<_> = inner.into_keys().collect();
        inner.sort();
        for key in inner {
            if !keys.contains(&key.as_str()) {
                let dotted = format!("{section}.{key}");
                return Err(ConfigError::UnknownKey {
                    origin: origin_of(&dotted),
                    key: dotted,
                    known: keys
                        .iter()
                        .map(|k| format!("{section}.{k}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
    }
    for (key, allowed) in CHOICES {
        let Ok(value) = config.get_string(key) else {
            continue;
        };
        if !allowed.contains(&value.as_str()) {
            return Err(ConfigError::BadValue(format!(
                "`{key}` ({}): `{value}` is not one of {}",
                origin_of(key),
                allowed.join(", ")
            )));
        }
    }
    if let Ok(level) = config.get_string("log.level") {
        check_log_filter(&level).map_err(|why| {
            ConfigError::BadValue(format!("`log.level` ({}): {why}", origin_of("log.level")))
        })?;
    }
    Ok(())
}

/// Settings that take one of a few words, and the words.
const CHOICES: &[(&str, &[&str])] = &[
    ("sync.delete_mode", &["soft", "hard"]),
    ("sync.on_error", &["dead_letter", "stop"]),
    ("log.format", &["text", "json"]),
];

/// The levels a log filter names.
const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Checks a log filter (`log.level`, `LEADSYNC_LOG`): comma-separated directives, each a level
/// or `target=level`. A word that is not a level is refused rather than read as a target
/// name, which would silence the log.
pub fn check_log_filter(filter: &str) -> Result<(), String> {
    let levels = LOG_LEVELS.join(", ");
    if filter.trim().is_empty() {
        return Err(format!(
            "empty; give a level ({levels}) or target=level directives"
        ));
    }
    for directive in filter.split(',').map(str::trim) {
        let level = match directive.rsplit_once('=') {
            Some((target, level)) if !target.trim().is_empty() => level.trim(),
            Some(_) => return Err(format!("`{directive}` names no target")),
            None => directive,
        };
        if !LOG_LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "`{level}` in `{filter}` is not a level: use one of {levels}, or \
                 target=level (e.g. leadsync=debug,info)"
            ));
        }
    }
    Ok(())
}

/// An unquoted SQL identifier leadsync can use as a schema or publication name.
/// Checks a database role name given on the command line (`--runtime-role`, …): a plain
/// identifier, so it can stand unquoted in the SQL leadsync prints and runs.
pub fn check_role_name(key: &'static str, value: &str) -> Result<(), ConfigError> {
    check_identifier(key, value)
}

fn check_identifier(key: &'static str, value: &str) -> Result<(), ConfigError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            key,
            reason: format!(
                "`{value}` is not a plain identifier (lowercase letters, digits and _, \
                 starting with a letter or _, at most 63 characters)"
            ),
        })
    }
}

/// PostgreSQL's own rule for slot names: lowercase letters, digits and `_`, at most 63.
fn check_slot_name(value: &str) -> Result<(), ConfigError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            key: "slot.name",
            reason: format!(
                "`{value}` is not a valid replication slot name (lowercase letters, digits \
                 and _, at most 63 characters)"
            ),
        })
    }
}

/// The URL with any password replaced by `***`, for messages and logs. Where the password
/// sits is decided so that it can never show, even unencoded: in a URL, everything between
/// `scheme://user:` and the *last* `@` of the whole text (a password may hold `/`, `?`, `#`
/// or `@`), and any `password` query parameter; in a `key=value` string, the value of
/// `password` however it is spaced or quoted. Text that cannot be read that way is not
/// shown at all.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return redact_key_value(url)
            .unwrap_or_else(|| "(a connection string that cannot be read; not shown)".into());
    };
    let (userinfo, after) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at..]),
        None => (None, rest),
    };
    let userinfo = match userinfo {
        Some(info) => match info.split_once(':') {
            Some((user, _)) => format!("{user}:***"),
            None => info.to_owned(),
        },
        None => String::new(),
    };
    format!("{scheme}://{userinfo}{}", redact_query_password(after))
}

fn redact_query_password(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{path}?{}", query.join("&"))
}

/// `host=x password=y` connection strings, read as libpq reads them (spaces around `=`,
/// single-quoted values with `\` escapes); `None` when that fails.
fn redact_key_value(conninfo: &str) -> Option<String> {
    let mut out = Vec::new();
    let mut chars = conninfo.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Some(out.join(" "));
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        chars.next_if_eq(&'=')?;
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next()? {
                    '\\' => value.push(chars.next()?),
                    '\'' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.push(chars.next()?);
                } else {
                    value.push(c);
                }
            }
        }
        if key.is_empty() {
            return None;
        }
        out.push(if key.eq_ignore_ascii_case("password") {
            format!("{key}=***")
        } else if value.chars().any(|c| c.is_whitespace() || c == '\'') {
            format!(
                "{key}='{}'",
                value.replace('\\', "\\\\").replace('\'', "\\'")
            )
        } else {
            format!("{key}={value}")
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_and_log_levels_name_what_is_allowed() {
        for (key, value, says) in [
            (
                "LEADSYNC_SYNC__DELETE_MODE",
                "sofft",
                "`sofft` is not one of soft, hard",
            ),
            (
                "LEADSYNC_SYNC__ON_ERROR",
                "halt",
                "not one of dead_letter, stop",
            ),
            ("LEADSYNC_LOG__FORMAT", "jsn", "not one of text, json"),
            (
                "LEADSYNC_LOG__LEVEL",
                "infoo",
                "`infoo` in `infoo` is not a level",
            ),
            ("LEADSYNC_LOG__LEVEL", "leadsync=debgu,info", "`debgu`"),
        ] {
            let err = Settings::load_from(None, env(&[(key, value)])).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(says), "{key}={value}: {text}");
            assert!(text.contains(key), "{key}={value}: {text}");
        }
        for ok in [
            "info",
            "leadsync=debug,info",
            "WARN",
            "off",
            "tokio_postgres=info, debug",
        ] {
            assert_eq!(check_log_filter(ok), Ok(()), "{ok}");
            Settings::load_from(None, env(&[("LEADSYNC_LOG__LEVEL", ok)])).unwrap();
        }
        // Every word listed is one the settings take (the list and the enums agree).
        for (key, allowed) in CHOICES {
            let var = format!("LEADSYNC_{}", key.replace('.', "__").to_uppercase());
            for value in *allowed {
                Settings::load_from(None, env(&[(var.as_str(), value)]))
                    .unwrap_or_else(|e| panic!("{var}={value}: {e}"));
            }
        }
    }
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn toml_file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    #[test]
    fn defaults_apply_without_a_file() {
        let s =
            Settings::load_from(None, env(&[("LEADSYNC_SOURCE__URL", "postgres://h/db")])).unwrap();
        s.validate().unwrap();
        assert_eq!(s.target.schema, "public");
        assert_eq!(s.slot.name, "leadsync");
        assert_eq!(s.publication.name, "leadsync");
        assert_eq!(s.sync.delete_mode, DeleteMode::Soft);
        assert!(s.sync.reverse);
        assert_eq!(s.sync.on_error, OnError::DeadLetter);
        assert_eq!(
            s.transform.product_rules,
            parse_rules("solar=SOLAR,hvac=HVAC,roofing=ROOFING").unwrap()
        );
        assert_eq!(s.metrics.listen, "127.0.0.1:9187");
        assert_eq!(s.log.format, LogFormat::Text);
        assert!(s.target.defer_legacy_foreign_keys);
        assert_eq!(s.target.lock_timeout_ms, 500);
    }

    #[test]
    fn lock_settings_come_from_the_environment_and_a_zero_timeout_is_refused() {
        let s = Settings::load_from(
            None,
            env(&[
                ("LEADSYNC_SOURCE__URL", "postgres://h/db"),
                ("LEADSYNC_TARGET__DEFER_LEGACY_FOREIGN_KEYS", "false"),
                ("LEADSYNC_TARGET__LOCK_TIMEOUT_MS", "250"),
            ]),
        )
        .unwrap();
        s.validate().unwrap();
        assert!(!s.target.defer_legacy_foreign_keys);
        assert_eq!(s.target.lock_timeout_ms, 250);
        let s = Settings::load_from(
            None,
            env(&[
                ("LEADSYNC_SOURCE__URL", "postgres://h/db"),
                ("LEADSYNC_TARGET__LOCK_TIMEOUT_MS", "0"),
            ]),
        )
        .unwrap();
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("target.lock_timeout_ms"), "{err}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let file = toml_file(
            "[source]\nurl = \"postgres://a/b\"\n[slot]\nname = \"from_file\"\n\
             [sync]\ndelete_mode = \"hard\"\nreverse = true\n",
        );
        let s = Settings::load_from(
            Some(file.path()),
            env(&[
                ("LEADSYNC_SLOT__NAME", "from_env"),
                ("LEADSYNC_SYNC__REVERSE", "false"),
                ("LEADSYNC_SYNC__ON_ERROR", "stop"),
                ("LEADSYNC_TRANSFORM__PRODUCT_RULES", "pv=SOLAR, heat=HVAC"),
                ("LEADSYNC_TRANSFORM__CASE_INSENSITIVE", "true"),
                ("LEADSYNC_LOG__FORMAT", "json"),
                ("OTHER_VARIABLE", "ignored"),
                ("LEADSYNC_CONFIG", "not a setting"),
            ]),
        )
        .unwrap();
        assert_eq!(s.slot.name, "from_env");
        assert_eq!(s.sync.delete_mode, DeleteMode::Hard);
        assert!(!s.sync.reverse);
        assert_eq!(s.sync.on_error, OnError::Stop);
        assert_eq!(
            s.transform.product_rules,
            vec![
                ProductRule {
                    needle: "pv".into(),
                    product: "SOLAR".into()
                },
                ProductRule {
                    needle: "heat".into(),
                    product: "HVAC".into()
                }
            ]
        );
        assert!(s.transform.case_insensitive);
        assert_eq!(s.log.format, LogFormat::Json);
    }

    #[test]
    fn product_rules_may_be_a_toml_list() {
        let file = toml_file("[transform]\nproduct_rules = [\"roof=ROOFING\", \"sun=SOLAR\"]\n");
        let s = Settings::load_from(Some(file.path()), env(&[])).unwrap();
        assert_eq!(s.transform.product_rules[0].needle, "roof");
        assert_eq!(s.transform.product_rules[1].product, "SOLAR");
    }

    #[test]
    fn unknown_key_in_file_is_named() {
        let file = toml_file("[slot]\nnmae = \"x\"\n");
        let err = Settings::load_from(Some(file.path()), env(&[])).unwrap_err();
        assert!(matches!(err, ConfigError::UnknownKey { ref key, .. } if key == "slot.nmae"));
        let text = err.to_string();
        assert!(
            text.contains("slot.nmae") && text.contains("slot.name"),
            "{text}"
        );
    }

    #[test]
    fn unknown_section_and_env_key_are_named() {
        let file = toml_file("[slots]\nname = \"x\"\n");
        let err = Settings::load_from(Some(file.path()), env(&[])).unwrap_err();
        assert!(matches!(err, ConfigError::UnknownKey { ref key, .. } if key == "slots"));

        let err = Settings::load_from(None, env(&[("LEADSYNC_SYNC__REVERS", "true")])).unwrap_err();
        assert!(err.to_string().contains("LEADSYNC_SYNC__REVERS"), "{err}");
        assert!(matches!(err, ConfigError::UnknownKey { ref key, .. } if key == "sync.revers"));

        let err = Settings::load_from(None, env(&[("LEADSYNC_SLOTNAME", "x")])).unwrap_err();
        assert!(matches!(err, ConfigError::BadEnvName { .. }), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = Settings::load_from(None, env(&[("LEADSYNC_SYNC__DELETE_MODE", "sof")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sync.delete_mode") && err.contains("sof"),
            "{err}"
        );

        let err = Settings::load_from(None, env(&[("LEADSYNC_SYNC__REVERSE", "maybe")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sync.reverse"), "{err}");

        let err = Settings::load_from(None, env(&[("LEADSYNC_TRANSFORM__PRODUCT_RULES", "solar")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("needle=PRODUCT"), "{err}");
    }

    #[test]
    fn validation_names_the_key() {
        let load = |pairs: &[(&str, &str)]| {
            let mut all = env(&[("LEADSYNC_SOURCE__URL", "postgres://h/db")]);
            all.extend(env(pairs));
            Settings::load_from(None, all).unwrap().validate()
        };
        let key_of = |r: Result<(), ConfigError>| match r {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected Invalid, got {other:?}"),
        };
        assert_eq!(
            key_of(load(&[("LEADSYNC_SLOT__NAME", "Bad-Name")])),
            "slot.name"
        );
        assert_eq!(
            key_of(load(&[("LEADSYNC_TARGET__SCHEMA", "x;drop")])),
            "target.schema"
        );
        assert_eq!(
            key_of(load(&[("LEADSYNC_METRICS__LISTEN", "localhost")])),
            "metrics.listen"
        );
        assert_eq!(
            key_of(load(&[("LEADSYNC_PUBLICATION__NAME", "")])),
            "publication.name"
        );
        // leadsync's own schema holds neither side: teardown drops it.
        assert_eq!(
            key_of(load(&[("LEADSYNC_TARGET__SCHEMA", "leadsync")])),
            "target.schema"
        );
        assert_eq!(
            key_of(load(&[("LEADSYNC_SOURCE__SCHEMA", "leadsync")])),
            "source.schema"
        );
        let missing = Settings::load_from(None, env(&[])).unwrap().validate();
        assert_eq!(key_of(missing), "source.url");
        let bad_url = Settings::load_from(
            None,
            env(&[("LEADSYNC_SOURCE__URL", "mysql://u:hunter2@h/db")]),
        )
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
        assert!(!bad_url.contains("hunter2"), "{bad_url}");
    }

    #[test]
    fn passwords_never_show() {
        let s = Settings::load_from(
            None,
            env(&[(
                "LEADSYNC_SOURCE__URL",
                "postgres://app:s3cr%40t@db:5432/crm",
            )]),
        )
        .unwrap();
        assert!(!format!("{s}").contains("s3cr"));
        assert!(!format!("{s:?}").contains("s3cr"));
        assert_eq!(
            redact_url("postgres://app:pw@db:5432/crm?sslmode=require"),
            "postgres://app:***@db:5432/crm?sslmode=require"
        );
        assert_eq!(redact_url("postgres://app@db/crm"), "postgres://app@db/crm");
        assert_eq!(
            redact_url("postgres://db/crm?user=a&password=pw"),
            "postgres://db/crm?user=a&password=***"
        );
        assert_eq!(
            redact_url("host=db password=pw user=a"),
            "host=db password=*** user=a"
        );
    }

    #[test]
    fn passwords_with_url_delimiters_or_spaces_never_show() {
        for secret in ["p/ss#1", "p?ss", "p#ss", "p@ss", "p:ss/x?y#z@w"] {
            for url in [
                format!("postgres://app:{secret}@db:5432/crm"),
                format!("postgres://app:{secret}@db/crm?sslmode=require"),
                format!("postgresql://app:{secret}@db"),
            ] {
                let shown = redact_url(&url);
                assert!(!shown.contains(secret), "{url} -> {shown}");
                assert!(shown.contains("app:***"), "{url} -> {shown}");
            }
        }
        for (conninfo, secret) in [
            ("host=db password = hunter2 user=a", "hunter2"),
            ("host=db password= 'two words' user=a", "two words"),
            ("host=db password ='it\\'s' user=a", "it's"),
            ("password=p@ss/x?y host=db", "p@ss"),
        ] {
            let shown = redact_url(conninfo);
            assert!(!shown.contains(secret), "{conninfo} -> {shown}");
            assert!(shown.contains("password=***"), "{conninfo} -> {shown}");
            assert!(shown.contains("host=db"), "{conninfo} -> {shown}");
        }
        // Unreadable: nothing of it is shown.
        let shown = redact_url("host=db password='unterminated secret");
        assert!(!shown.contains("secret"), "{shown}");
        // The settings as logged at start, with such a password.
        let s = Settings::load_from(
            None,
            env(&[("LEADSYNC_SOURCE__URL", "postgres://app:p/ss?#@db/crm")]),
        )
        .unwrap();
        assert!(!format!("{s}").contains("p/ss"), "{s}");
        let invalid = Settings::load_from(
            None,
            env(&[(
                "LEADSYNC_SOURCE__URL",
                "postgres://app:p/ss?#@db:notaport/crm",
            )]),
        )
        .unwrap()
        .validate()
        .map(|_| String::new())
        .unwrap_or_else(|e| e.to_string());
        assert!(!invalid.contains("p/ss"), "{invalid}");
    }

    #[test]
    fn example_file_lists_every_key_with_its_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/leadsync.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let table: toml::Table = text.parse().unwrap();
        for (section, keys) in KEYS {
            for key in *keys {
                let present = table.get(*section).and_then(|s| s.get(*key)).is_some();
                let commented = text.contains(&format!("# {key} ="));
                assert!(
                    present || commented,
                    "config/leadsync.toml does not document {section}.{key}"
                );
            }
        }
        let s = Settings::load_from(Some(&path), env(&[])).unwrap();
        let d = Settings::default();
        assert_eq!(s.slot.name, d.slot.name);
        assert_eq!(s.transform.product_rules, d.transform.product_rules);
        assert_eq!(s.metrics.listen, d.metrics.listen);
        assert_eq!(s.sync.delete_mode, d.sync.delete_mode);
    }
}
