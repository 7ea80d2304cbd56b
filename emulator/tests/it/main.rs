//! Integration tests: the emulator on port 0, driven through the official clients, pushing
//! to a real HTTP sink on 127.0.0.1.

mod binary;
mod conformance;
mod dispatch;
mod durability;
mod grpc;
mod support;
