//! The bounds a client can run into, as typed identifiers (docs/ARCHITECTURE.md, "The error
//! model"). A domain message names the bound and its value ("3 items, over the limit of 2 per
//! request") and the [`Limit`] it hit; the setting's spelling on the command line comes from
//! [`Limit::flag`], the one table of them, so no domain message writes a flag's name by hand and a
//! renamed flag is one edit here. A test checks every entry against the command line.

use std::fmt;

/// A bound set by a serve flag, as the domain names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    MaxItemsPerRequest,
    MaxImageBytes,
    MaxTextBytes,
    MaxLabels,
    MaxTemplates,
    MaxInlinePrompts,
    MaxLabelSets,
    MaxLabelSetPrompts,
    MaxCollections,
    MaxCollectionItems,
    MaxUpsertItems,
    MaxModelBytes,
    MaxReplyBytes,
    MaxTopK,
    MaxMetadataBytes,
    MaxQueueRows,
    MaxInflightBytes,
    MaxDecodeBytes,
    MaxConcurrentRequests,
    HeaderReadTimeout,
    IdleTimeout,
    FetchTimeout,
    FetchMaxRedirects,
    FetchMaxBytes,
    /// Not a size: the hosts (and ports) an image URL may name besides public https ones.
    FetchAllowHosts,
    PostgresStatementTimeout,
    PostgresLockTimeout,
}

impl Limit {
    /// Every limit, for the test that checks them against the command line.
    pub const ALL: [Limit; 27] = [
        Limit::MaxItemsPerRequest,
        Limit::MaxImageBytes,
        Limit::MaxTextBytes,
        Limit::MaxLabels,
        Limit::MaxTemplates,
        Limit::MaxInlinePrompts,
        Limit::MaxLabelSets,
        Limit::MaxLabelSetPrompts,
        Limit::MaxCollections,
        Limit::MaxCollectionItems,
        Limit::MaxUpsertItems,
        Limit::MaxModelBytes,
        Limit::MaxReplyBytes,
        Limit::MaxTopK,
        Limit::MaxMetadataBytes,
        Limit::MaxQueueRows,
        Limit::MaxInflightBytes,
        Limit::MaxDecodeBytes,
        Limit::MaxConcurrentRequests,
        Limit::HeaderReadTimeout,
        Limit::IdleTimeout,
        Limit::FetchTimeout,
        Limit::FetchMaxRedirects,
        Limit::FetchMaxBytes,
        Limit::FetchAllowHosts,
        Limit::PostgresStatementTimeout,
        Limit::PostgresLockTimeout,
    ];

    /// The serve flag that sets it, as an operator types it (`--max-items-per-request`).
    pub fn flag(self) -> &'static str {
        match self {
            Limit::MaxItemsPerRequest => "--max-items-per-request",
            Limit::MaxImageBytes => "--max-image-bytes",
            Limit::MaxTextBytes => "--max-text-bytes",
            Limit::MaxLabels => "--max-labels",
            Limit::MaxTemplates => "--max-templates",
            Limit::MaxInlinePrompts => "--max-inline-prompts",
            Limit::MaxLabelSets => "--max-label-sets",
            Limit::MaxLabelSetPrompts => "--max-label-set-prompts",
            Limit::MaxCollections => "--max-collections",
            Limit::MaxCollectionItems => "--max-collection-items",
            Limit::MaxUpsertItems => "--max-upsert-items",
            Limit::MaxModelBytes => "--max-model-bytes",
            Limit::MaxReplyBytes => "--max-reply-bytes",
            Limit::MaxTopK => "--max-top-k",
            Limit::MaxMetadataBytes => "--max-metadata-bytes",
            Limit::MaxQueueRows => "--max-queue-rows",
            Limit::MaxInflightBytes => "--max-inflight-bytes",
            Limit::MaxDecodeBytes => "--max-decode-bytes",
            Limit::MaxConcurrentRequests => "--max-concurrent-requests",
            Limit::HeaderReadTimeout => "--header-read-timeout",
            Limit::IdleTimeout => "--idle-timeout",
            Limit::FetchTimeout => "--fetch-timeout",
            Limit::FetchMaxRedirects => "--fetch-max-redirects",
            Limit::FetchMaxBytes => "--fetch-max-bytes",
            Limit::FetchAllowHosts => "--fetch-allow-hosts",
            Limit::PostgresStatementTimeout => "--postgres-statement-timeout",
            Limit::PostgresLockTimeout => "--postgres-lock-timeout",
        }
    }
}

/// The limits as constants, so a message names one inline: `"over the limit of {max} ({MAX_LABELS})"`.
pub const MAX_ITEMS_PER_REQUEST: Limit = Limit::MaxItemsPerRequest;
pub const MAX_IMAGE_BYTES: Limit = Limit::MaxImageBytes;
pub const MAX_TEXT_BYTES: Limit = Limit::MaxTextBytes;
pub const MAX_LABELS: Limit = Limit::MaxLabels;
pub const MAX_TEMPLATES: Limit = Limit::MaxTemplates;
pub const MAX_INLINE_PROMPTS: Limit = Limit::MaxInlinePrompts;
pub const MAX_LABEL_SETS: Limit = Limit::MaxLabelSets;
pub const MAX_LABEL_SET_PROMPTS: Limit = Limit::MaxLabelSetPrompts;
pub const MAX_COLLECTIONS: Limit = Limit::MaxCollections;
pub const MAX_COLLECTION_ITEMS: Limit = Limit::MaxCollectionItems;
pub const MAX_UPSERT_ITEMS: Limit = Limit::MaxUpsertItems;
pub const MAX_MODEL_BYTES: Limit = Limit::MaxModelBytes;
pub const MAX_REPLY_BYTES: Limit = Limit::MaxReplyBytes;
pub const MAX_TOP_K: Limit = Limit::MaxTopK;
pub const MAX_METADATA_BYTES: Limit = Limit::MaxMetadataBytes;
pub const MAX_QUEUE_ROWS: Limit = Limit::MaxQueueRows;
pub const MAX_INFLIGHT_BYTES: Limit = Limit::MaxInflightBytes;
pub const MAX_DECODE_BYTES: Limit = Limit::MaxDecodeBytes;
pub const MAX_CONCURRENT_REQUESTS: Limit = Limit::MaxConcurrentRequests;
pub const HEADER_READ_TIMEOUT: Limit = Limit::HeaderReadTimeout;
pub const IDLE_TIMEOUT: Limit = Limit::IdleTimeout;
pub const FETCH_TIMEOUT: Limit = Limit::FetchTimeout;
pub const FETCH_MAX_REDIRECTS: Limit = Limit::FetchMaxRedirects;
pub const FETCH_MAX_BYTES: Limit = Limit::FetchMaxBytes;
pub const FETCH_ALLOW_HOSTS: Limit = Limit::FetchAllowHosts;
pub const POSTGRES_STATEMENT_TIMEOUT: Limit = Limit::PostgresStatementTimeout;
pub const POSTGRES_LOCK_TIMEOUT: Limit = Limit::PostgresLockTimeout;

/// A limit displays as its flag: messages end in `(--max-labels)` through `({limit})`.
impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.flag())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every limit names a real flag of `clip-serve serve`: a renamed flag fails here, not in a
    /// client's error message.
    #[test]
    fn every_limit_names_a_serve_flag() {
        use clap::CommandFactory;
        let cli = crate::cli::Cli::command();
        let serve = cli.find_subcommand("serve").expect("the serve subcommand");
        let flags: Vec<String> = serve
            .get_arguments()
            .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
            .collect();
        for limit in Limit::ALL {
            assert!(
                flags.iter().any(|f| f == limit.flag()),
                "{limit:?}: {} is not a serve flag",
                limit.flag()
            );
        }
        let mut seen: Vec<&str> = Limit::ALL.iter().map(|l| l.flag()).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), Limit::ALL.len(), "two limits share a flag");
    }

    #[test]
    fn a_limit_displays_as_its_flag() {
        assert_eq!(
            format!("over the limit of 3 ({MAX_LABELS})"),
            "over the limit of 3 (--max-labels)"
        );
    }
}
