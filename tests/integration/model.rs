//! Placeholder: the model-based property test is being written.
