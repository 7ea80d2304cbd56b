//! Cloud Tasks emulator (being built).
