//! Label and field selectors with Kubernetes' syntax, validation messages and matching
//! rules, working on `serde_json` objects so built-in kinds and custom resources share them.

mod field;
mod label;
pub mod validation;

pub use field::{escape_value, unescape_value, FieldOperator, FieldRequirement, FieldSelector};
pub use label::{LabelSelector, Operator, Requirement};

/// A selector that cannot be parsed or converted. The message is what the Kubernetes API
/// server would say (e.g. `unable to parse requirement: ...`); servers answer 400 with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("{0}")]
    Label(String),
    #[error("{0}")]
    Field(String),
}
