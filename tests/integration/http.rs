//! Placeholder: the HTTP port tests are being written.
