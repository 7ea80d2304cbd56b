//! What each fuzz target runs, as plain functions: libFuzzer calls them from `fuzz_targets/`, and
//! the workspace's `dev/tests/it/fuzz_corpus.rs` compiles this file and calls them on stable over
//! the seed corpus and generated inputs. Each must
//! never panic, whatever the bytes; a finding becomes a file in `seeds/<target>/` (so every run
//! replays it) and a regression test in the crate it concerns.

use std::io::Cursor;

use backless_common::limits::ImageLimits;
use backless_emulator::model::{normalize_http_task, normalize_queue, pb};

/// Small limits so the fuzzer explores the refusals as well as the decodes, quickly.
pub fn limits() -> ImageLimits {
    ImageLimits {
        max_bytes: 1 << 20,
        max_pixels: 1 << 20,
        max_side: 4096,
        max_frames: 64,
        max_working_bytes: 256 << 20,
    }
}

/// The upload check web runs before storing anything: sniff, header dimensions, frame count.
/// Whatever it accepts must be within the limits.
pub fn upload(data: &[u8]) {
    let l = limits();
    let frames = backless_common::frames::count_frames(data);
    if let Ok(c) = backless_web::upload::check_image(data, &l) {
        assert!(c.width <= l.max_side && c.height <= l.max_side);
        assert!(u64::from(c.width) * u64::from(c.height) <= l.max_pixels);
        assert!(frames <= l.max_frames);
        assert!(backless_web::upload::sniff(data).is_some());
    }
    let name = String::from_utf8_lossy(data);
    let shown = backless_web::upload::display_name(Some(name.as_ref()));
    assert!(!shown.contains('/') && !shown.contains('\\'));
    assert!(shown.chars().count() <= 100);
}

/// The worker's decode under limits: an error or an image within the limits, never a panic and
/// never an allocation the limits did not allow.
pub fn decode(data: &[u8]) {
    let l = limits();
    if let Ok(img) = backless_worker::imaging::decode(data, &l) {
        // EXIF rotation may swap the sides, not grow them.
        assert!(img.width() <= l.max_side && img.height() <= l.max_side);
        assert!(u64::from(img.width()) * u64::from(img.height()) <= l.max_pixels);
    }
}

/// The emulator's REST request bodies: JSON to queue and task, then the same validation the
/// engine applies; anything parsed must serialise back.
pub fn emulator_rest(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    for v in [&v, &v["queue"], &v["task"]] {
        if let Ok(mut q) = backless_emulator::api::json::queue_from_json(v)
            && normalize_queue(&mut q).is_ok()
        {
            let _ = backless_emulator::api::json::queue_to_json(
                &q,
                backless_emulator::api::json::Enums::Str,
            );
        }
        if let Ok(mut t) = backless_emulator::api::json::task_from_json(v)
            && normalize_http_task(&mut t).is_ok()
        {
            let _ = backless_emulator::api::json::task_to_json(
                &t,
                backless_emulator::api::json::Enums::Str,
            );
        }
    }
    let _ = backless_emulator::api::json::view_from(v.get("responseView"));
}

/// The emulator's gRPC request messages: protobuf decode, then names and validation.
pub fn emulator_grpc(data: &[u8]) {
    use backless_emulator::names;
    use prost::Message;
    if let Ok(r) = pb::CreateTaskRequest::decode(Cursor::new(data)) {
        if let Ok(q) = names::parse_queue_parent(&r.parent, "cloudtasks.tasks.create")
            && let Some(t) = &r.task
            && !t.name.is_empty()
        {
            let _ = names::parse_new_task_name(&q, &t.name);
        }
        if let Some(mut t) = r.task {
            let _ = normalize_http_task(&mut t);
        }
    }
    if let Ok(r) = pb::CreateQueueRequest::decode(Cursor::new(data)) {
        let _ = names::parse_location(&r.parent, "cloudtasks.queues.create");
        if let Some(mut q) = r.queue
            && normalize_queue(&mut q).is_ok()
        {
            let _ = names::parse_new_queue_name(&r.parent, &q.name);
        }
    }
    if let Ok(r) = pb::UpdateQueueRequest::decode(Cursor::new(data))
        && let Some(mut q) = r.queue
    {
        let _ = names::parse_queue_name(&q.name);
        let _ = normalize_queue(&mut q);
    }
    if let Ok(r) = pb::GetTaskRequest::decode(Cursor::new(data)) {
        let _ = names::parse_task_name(&r.name);
    }
}

/// A fuzz target: what it is called, and the function libFuzzer calls.
pub type Target = (&'static str, fn(&[u8]));

/// Every target by name (the stable runner walks them).
pub const TARGETS: &[Target] = &[
    ("upload", upload),
    ("decode", decode),
    ("emulator_rest", emulator_rest),
    ("emulator_grpc", emulator_grpc),
];
