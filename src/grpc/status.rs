//! The one mapping from domain errors to gRPC statuses (docs/ARCHITECTURE.md, "The error model").
//! Exhaustive on purpose: a new error variant does not compile until it is given a code here. Field
//! paths render with the proto's own field names, which are the domain's (`images[3]`,
//! `items[4].vector`, `query`).

use tonic::{Code, Status};

use crate::common::ServiceError;

/// The gRPC code of a domain error.
pub fn code_of(error: &ServiceError) -> Code {
    match error {
        ServiceError::InvalidArgument(_) => Code::InvalidArgument,
        ServiceError::ResourceExhausted(_) => Code::ResourceExhausted,
        ServiceError::Unavailable(_) => Code::Unavailable,
        ServiceError::DeadlineExceeded(_) => Code::DeadlineExceeded,
        ServiceError::NotFound(_) => Code::NotFound,
        ServiceError::AlreadyExists(_) => Code::AlreadyExists,
        ServiceError::Aborted(_) => Code::Aborted,
        ServiceError::FailedPrecondition(_) => Code::FailedPrecondition,
        ServiceError::Internal(_) => Code::Internal,
    }
}

/// Upper-case name of a code, as grpcurl prints it: `INVALID_ARGUMENT`.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The message a client reads.
pub fn message_of(error: &ServiceError) -> String {
    match error {
        // The proto's field names are the domain's: no renaming.
        ServiceError::InvalidArgument(invalid) => invalid.render(&|_| None),
        ServiceError::ResourceExhausted(m)
        | ServiceError::Unavailable(m)
        | ServiceError::DeadlineExceeded(m)
        | ServiceError::NotFound(m)
        | ServiceError::AlreadyExists(m)
        | ServiceError::Aborted(m)
        | ServiceError::FailedPrecondition(m)
        | ServiceError::Internal(m) => m.clone(),
    }
}

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Self {
        Status::new(code_of(&error), message_of(&error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_its_code_and_keeps_its_message() {
        let cases = [
            (
                ServiceError::invalid_item(crate::common::List::Images, 3, "bad"),
                Code::InvalidArgument,
                "images[3]: bad",
            ),
            (
                ServiceError::ResourceExhausted("full".into()),
                Code::ResourceExhausted,
                "full",
            ),
            (
                ServiceError::Unavailable("loading".into()),
                Code::Unavailable,
                "loading",
            ),
            (
                ServiceError::DeadlineExceeded("late".into()),
                Code::DeadlineExceeded,
                "late",
            ),
            (ServiceError::NotFound("x".into()), Code::NotFound, "x"),
            (
                ServiceError::AlreadyExists("x".into()),
                Code::AlreadyExists,
                "x",
            ),
            (
                ServiceError::FailedPrecondition("no tower".into()),
                Code::FailedPrecondition,
                "no tower",
            ),
            (
                ServiceError::Internal("see logs".into()),
                Code::Internal,
                "see logs",
            ),
        ];
        for (error, code, message) in cases {
            let status = Status::from(error);
            assert_eq!(status.code(), code);
            assert_eq!(status.message(), message);
        }
        assert_eq!(code_name(Code::InvalidArgument), "INVALID_ARGUMENT");
    }
}
