//! Blindsight server library.
