//! The error catalog: every error code the service can answer, with its HTTP status and message.
//!
//! This is the only place where codes, statuses and messages are spelled. The seed document's table
//! (`SendPhoneVerificationForMessageContact`) is reproduced exactly; the other codes follow the
//! Alibaba Cloud OpenAPI conventions the official SDKs understand.

use std::borrow::Cow;

/// An error answered to an API caller. Each variant says which HTTP status it maps to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 400 `MissingParameter.<Name>`
    #[error("You must specify {0}.")]
    MissingParameter(&'static str),
    /// 400 `InvalidParameter.<Name>`
    #[error("The {0} is invalid.")]
    InvalidParameter(&'static str),
    /// 400 `InvalidParameter.MobileCountryCode`
    #[error("The current site does not support the country code.")]
    MobileCountryCode,
    /// 400 `InvalidParameter.Name.AlreadyUsed`
    #[error("The contact name is already used in this account.")]
    NameAlreadyUsed,
    /// 404 `EntityNotExists.Contact`
    #[error("This Contact does not exist.")]
    ContactNotFound,
    /// 404 `EntityNotExists.Contact.Verification`
    #[error("This contact verification does not exist.")]
    VerificationNotFound,
    /// 404 `EntityNotExists.Contact.Deletion`
    #[error("No deletion of this contact is known.")]
    DeletionNotFound,
    /// 404 `EntityNotExists.VerificationRequest`
    #[error("This verification request does not exist.")]
    RequestNotFound,
    /// 409 `SendValidateCodeExceedsLimitForAccount`
    #[error("For the same account, the number of verification codes sent exceeds the limit.")]
    DailyLimitExceeded,
    /// 429 `Throttling.Contact` (with retry-after)
    #[error("A verification code was sent to this contact recently. Retry later.")]
    ContactThrottled { retry_after_ms: u64 },
    /// 400 `InvalidVerificationCode`
    #[error("The verification code is incorrect. {attempts_left} attempt(s) left.")]
    InvalidVerificationCode { attempts_left: u32 },
    /// 400 `VerificationCodeExpired`
    #[error("The verification code has expired. Send a new one.")]
    VerificationCodeExpired,
    /// 400 `VerificationCodeAttemptsExceeded`
    #[error("Too many wrong verification codes. The code is locked: send a new one.")]
    VerificationCodeAttemptsExceeded,
    /// 400 `OperationNotSupported.EmailVerification`
    #[error("Email verification is not available on this service yet.")]
    EmailVerificationUnsupported,
    /// 400 `IncompleteSignature`
    #[error("The request signature does not conform to Aliyun standards. {0}")]
    IncompleteSignature(&'static str),
    /// 400 `SignatureDoesNotMatch`
    #[error("Specified signature is not matched with our calculation.")]
    SignatureDoesNotMatch,
    /// 400 `InvalidTimeStamp.Expired`
    #[error("Specified time stamp or date value is expired.")]
    TimestampExpired,
    /// 400 `InvalidTimeStamp.Format`
    #[error("Specified time stamp or date value is not well formatted.")]
    TimestampFormat,
    /// 400 `SignatureNonceUsed`
    #[error("Specified signature nonce was used already.")]
    SignatureNonceUsed,
    /// 404 `InvalidAccessKeyId.NotFound`
    #[error("Specified access key is not found.")]
    AccessKeyNotFound,
    /// 400 `InvalidAccessKeyId.Inactive`
    #[error("Specified access key is disabled.")]
    AccessKeyInactive,
    /// 400 `SignatureMethod.NotSupported`
    #[error("The signature method is not supported.")]
    SignatureMethodUnsupported,
    /// 404 `InvalidAction.NotFound`
    #[error("Specified api is not found, please check your url and method.")]
    ActionNotFound,
    /// 400 `MissingParameter.Action`
    #[error("You must specify Action.")]
    MissingAction,
    /// 400 `InvalidVersion`
    #[error("Specified parameter Version is not valid.")]
    InvalidVersion,
    /// 400 `InvalidParameter.Encoding`
    #[error("The request contains parameters that are not valid UTF-8 or form encoding.")]
    InvalidEncoding,
    /// 405 `UnsupportedHTTPMethod`
    #[error("The HTTP method is not supported. Use POST or GET.")]
    UnsupportedMethod,
    /// 413 `RequestEntityTooLarge`
    #[error("The request body exceeds {0} bytes.")]
    BodyTooLarge(usize),
    /// 408 `RequestTimeout`: the body did not arrive within the server's deadline.
    #[error("The request body was not received in time.")]
    RequestTimeout,
    /// 503 `ServiceUnavailable` (with retry-after)
    #[error("The request has failed due to a temporary failure of the server.")]
    ServiceUnavailable { retry_after_ms: u64 },
    /// 500 `InternalError`
    #[error("The request processing has failed due to some unknown error, exception or failure.")]
    Internal,
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> u16 {
        use ApiError::*;
        match self {
            ContactNotFound | VerificationNotFound | DeletionNotFound | RequestNotFound
            | AccessKeyNotFound | ActionNotFound => 404,
            DailyLimitExceeded => 409,
            ContactThrottled { .. } => 429,
            UnsupportedMethod => 405,
            BodyTooLarge(_) => 413,
            RequestTimeout => 408,
            ServiceUnavailable { .. } => 503,
            Internal => 500,
            _ => 400,
        }
    }

    /// The Alibaba error code.
    pub fn code(&self) -> Cow<'static, str> {
        use ApiError::*;
        Cow::Borrowed(match self {
            MissingParameter(name) => return Cow::Owned(format!("MissingParameter.{name}")),
            InvalidParameter(name) => return Cow::Owned(format!("InvalidParameter.{name}")),
            MobileCountryCode => "InvalidParameter.MobileCountryCode",
            NameAlreadyUsed => "InvalidParameter.Name.AlreadyUsed",
            ContactNotFound => "EntityNotExists.Contact",
            VerificationNotFound => "EntityNotExists.Contact.Verification",
            DeletionNotFound => "EntityNotExists.Contact.Deletion",
            RequestNotFound => "EntityNotExists.VerificationRequest",
            DailyLimitExceeded => "SendValidateCodeExceedsLimitForAccount",
            ContactThrottled { .. } => "Throttling.Contact",
            InvalidVerificationCode { .. } => "InvalidVerificationCode",
            VerificationCodeExpired => "VerificationCodeExpired",
            VerificationCodeAttemptsExceeded => "VerificationCodeAttemptsExceeded",
            EmailVerificationUnsupported => "OperationNotSupported.EmailVerification",
            IncompleteSignature(_) => "IncompleteSignature",
            SignatureDoesNotMatch => "SignatureDoesNotMatch",
            TimestampExpired => "InvalidTimeStamp.Expired",
            TimestampFormat => "InvalidTimeStamp.Format",
            SignatureNonceUsed => "SignatureNonceUsed",
            AccessKeyNotFound => "InvalidAccessKeyId.NotFound",
            AccessKeyInactive => "InvalidAccessKeyId.Inactive",
            SignatureMethodUnsupported => "SignatureMethod.NotSupported",
            ActionNotFound => "InvalidAction.NotFound",
            MissingAction => "MissingParameter.Action",
            InvalidVersion => "InvalidVersion",
            InvalidEncoding => "InvalidParameter.Encoding",
            UnsupportedMethod => "UnsupportedHTTPMethod",
            BodyTooLarge(_) => "RequestEntityTooLarge",
            RequestTimeout => "RequestTimeout",
            ServiceUnavailable { .. } => "ServiceUnavailable",
            Internal => "InternalError",
        })
    }

    /// The human message (the seed's exact wording for its codes).
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// Milliseconds the caller should wait before retrying, for throttling and backpressure answers.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            ApiError::ContactThrottled { retry_after_ms }
            | ApiError::ServiceUnavailable { retry_after_ms } => Some(*retry_after_ms),
            _ => None,
        }
    }
}

/// A database failure on the request path: logged here (its text may name tables and values, so it
/// never reaches the caller), answered 503 so the caller retries.
impl From<sea_orm::DbErr> for ApiError {
    fn from(e: sea_orm::DbErr) -> Self {
        tracing::error!(error = %e, "database error");
        ApiError::ServiceUnavailable {
            retry_after_ms: 1000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed document's table, verbatim: status, code, message.
    const SEED: &[(u16, &str, &str)] = &[
        (
            400,
            "MissingParameter.ContactId",
            "You must specify ContactId.",
        ),
        (
            400,
            "InvalidParameter.ContactId",
            "The ContactId is invalid.",
        ),
        (
            400,
            "MissingParameter.PhoneNumber",
            "You must specify PhoneNumber.",
        ),
        (
            400,
            "InvalidParameter.PhoneNumber",
            "The PhoneNumber is invalid.",
        ),
        (
            400,
            "InvalidParameter.MobileCountryCode",
            "The current site does not support the country code.",
        ),
        (
            404,
            "EntityNotExists.Contact",
            "This Contact does not exist.",
        ),
        (
            404,
            "EntityNotExists.Contact.Verification",
            "This contact verification does not exist.",
        ),
        (
            409,
            "SendValidateCodeExceedsLimitForAccount",
            "For the same account, the number of verification codes sent exceeds the limit.",
        ),
    ];

    #[test]
    fn seed_table_is_reproduced_exactly() {
        let errors = [
            ApiError::MissingParameter("ContactId"),
            ApiError::InvalidParameter("ContactId"),
            ApiError::MissingParameter("PhoneNumber"),
            ApiError::InvalidParameter("PhoneNumber"),
            ApiError::MobileCountryCode,
            ApiError::ContactNotFound,
            ApiError::VerificationNotFound,
            ApiError::DailyLimitExceeded,
        ];
        for (err, (status, code, message)) in errors.iter().zip(SEED) {
            assert_eq!(err.status(), *status, "{code}");
            assert_eq!(err.code(), *code);
            assert_eq!(err.message(), *message);
        }
    }

    #[test]
    fn throttling_answers_carry_retry_after() {
        let e = ApiError::ContactThrottled {
            retry_after_ms: 1500,
        };
        assert_eq!((e.status(), e.retry_after_ms()), (429, Some(1500)));
        let e = ApiError::ServiceUnavailable {
            retry_after_ms: 1000,
        };
        assert_eq!((e.status(), e.retry_after_ms()), (503, Some(1000)));
        assert_eq!(ApiError::ContactNotFound.retry_after_ms(), None);
    }
}
