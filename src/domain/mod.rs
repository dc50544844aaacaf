//! Domain types parsed at the edge: once a value has one of these types, it is valid.

mod contact;
mod ids;
mod phone;
#[cfg(test)]
mod tests;

pub use contact::{ContactName, EmailAddress, MessageType, MessageTypes, Title};
pub use ids::{AccountId, ContactId, MemberId, RequestId, live_key};
pub use phone::{PhoneNumber, SupportedCountries, mask_phone};
