//! cnnkit facade
