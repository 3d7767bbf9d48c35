//! The domain error of a request. Every failure a client can see is one of these variants; each
//! protocol layer maps them to its wire codes in exactly one place (`grpc::status`, `http::error`).
//!
//! An invalid input says *where* it is as data ([`Field`]), not as text: the gRPC layer renders
//! `images[3]`, the OpenAI route `input[3]`, a Rank query `query`, each from the same error. A
//! domain function that works on a sub-list (a Rank's texts among its candidates) relocates the
//! field with [`ServiceError::relocate`] instead of rewriting a message.

use std::fmt;

/// A list of items in a request, as the domain knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum List {
    Images,
    Texts,
    Labels,
    Templates,
    /// Upsert items.
    Items,
    /// Rank candidates.
    Candidates,
    /// Ids of a Delete or GetItems.
    Ids,
}

impl List {
    /// The domain's own name, which is also the gRPC field name.
    pub fn as_str(self) -> &'static str {
        match self {
            List::Images => "images",
            List::Texts => "texts",
            List::Labels => "labels",
            List::Templates => "templates",
            List::Items => "items",
            List::Candidates => "candidates",
            List::Ids => "ids",
        }
    }
}

/// Where in a request an invalid value is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// A single request field: `top_k`, `filter`, `name`, `query`, `label_set`.
    Param(&'static str),
    /// A list as a whole (`images: empty request`).
    List(List),
    /// One element of a list (`images[3]`).
    Item(List, usize),
    /// A part of another field (`items[4].vector`, `query.text`).
    Part(Box<Field>, &'static str),
}

impl Field {
    pub fn item(list: List, index: usize) -> Self {
        Field::Item(list, index)
    }

    /// `self.part`.
    pub fn part(self, name: &'static str) -> Self {
        Field::Part(Box::new(self), name)
    }

    /// Renders the path with a protocol's names for lists (and single fields): the gRPC layer
    /// passes the domain names through, the OpenAI layer calls every item list `input`.
    pub fn render(&self, name_of: &dyn Fn(&Field) -> Option<&'static str>) -> String {
        if let Some(name) = name_of(self) {
            return name.to_string();
        }
        match self {
            Field::Param(name) => (*name).to_string(),
            Field::List(list) => list_name(name_of, *list),
            Field::Item(list, index) => format!("{}[{index}]", list_name(name_of, *list)),
            Field::Part(of, part) => format!("{}.{part}", of.render(name_of)),
        }
    }
}

fn list_name(name_of: &dyn Fn(&Field) -> Option<&'static str>, list: List) -> String {
    name_of(&Field::List(list)).map_or_else(|| list.as_str().to_string(), str::to_string)
}

impl fmt::Display for Field {
    /// The domain's names (those of the gRPC API).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(&|_| None))
    }
}

/// An invalid input: where it is (when it is one field) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: Option<Field>,
    pub reason: String,
}

impl Invalid {
    /// `field: reason`, with a protocol's names (see [`Field::render`]).
    pub fn render(&self, name_of: &dyn Fn(&Field) -> Option<&'static str>) -> String {
        match &self.field {
            Some(field) => format!("{}: {}", field.render(name_of), self.reason),
            None => self.reason.clone(),
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(&|_| None))
    }
}

/// What went wrong with a request, classified by who has to act on it.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request itself is wrong: empty, too many items, an undecodable or oversized image, a bad
    /// field. Says which field and why.
    #[error("{0}")]
    InvalidArgument(Invalid),
    /// The server is at capacity (no request permit, queue full). Retrying later may succeed.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The model is still loading, or the server is shutting down.
    #[error("{0}")]
    Unavailable(String),
    /// The caller's deadline passed before the work was computed.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A named thing (collection, label set, id) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A named thing that must be new already exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// The write lost a race (its collection was deleted, and maybe re-created, meanwhile); nothing
    /// of it was applied. Retrying may succeed.
    #[error("{0}")]
    Aborted(String),
    /// The request cannot work with what this server serves, e.g. a text request to an image-only model.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A bug or an ONNX Runtime failure. The detail is logged; clients get a generic message.
    #[error("{0}")]
    Internal(String),
}

impl ServiceError {
    /// An invalid value at `field`: `images[3]: image is 31 MB, over the 16 MB limit`.
    pub fn invalid(field: Field, reason: impl fmt::Display) -> Self {
        Self::InvalidArgument(Invalid {
            field: Some(field),
            reason: reason.to_string(),
        })
    }

    /// An invalid request that is not about one field (`set either labels or label_set`).
    pub fn invalid_request(reason: impl fmt::Display) -> Self {
        Self::InvalidArgument(Invalid {
            field: None,
            reason: reason.to_string(),
        })
    }

    /// An invalid item of a list: `images[3]: ...`.
    pub fn invalid_item(list: List, index: usize, reason: impl fmt::Display) -> Self {
        Self::invalid(Field::Item(list, index), reason)
    }

    /// Moves an invalid field to where the caller's request has it (the first text of a Rank
    /// may be its `query`); other errors pass unchanged.
    pub fn relocate(self, to: impl FnOnce(Field) -> Field) -> Self {
        match self {
            Self::InvalidArgument(Invalid {
                field: Some(field),
                reason,
            }) => Self::InvalidArgument(Invalid {
                field: Some(to(field)),
                reason,
            }),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_render_with_the_protocols_names() {
        let f = Field::item(List::Items, 4).part("vector");
        assert_eq!(f.to_string(), "items[4].vector");
        let input = |f: &Field| match f {
            Field::List(List::Images | List::Texts) => Some("input"),
            _ => None,
        };
        assert_eq!(Field::item(List::Texts, 2).render(&input), "input[2]");
        assert_eq!(Field::item(List::Labels, 2).render(&input), "labels[2]");
        let e = ServiceError::invalid_item(List::Texts, 2, "too long");
        assert_eq!(e.to_string(), "texts[2]: too long");
        let ServiceError::InvalidArgument(inv) = e else {
            unreachable!()
        };
        assert_eq!(inv.render(&input), "input[2]: too long");
    }

    #[test]
    fn relocation_changes_the_field_not_the_reason() {
        let e = ServiceError::invalid_item(List::Texts, 0, "bad").relocate(|f| match f {
            Field::Item(List::Texts, 0) => Field::Param("query").part("text"),
            other => other,
        });
        assert_eq!(e.to_string(), "query.text: bad");
        let e = ServiceError::invalid_request("no field").relocate(|_| Field::Param("x"));
        assert_eq!(e.to_string(), "no field");
        let e = ServiceError::NotFound("gone".into()).relocate(|_| Field::Param("x"));
        assert_eq!(e.to_string(), "gone");
    }
}
