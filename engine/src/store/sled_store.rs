//! The sled implementation of [`super::Store`].
