//! The `worker` command line: batch background removal and model import.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};

use backless_common::config::FromSettings;
use backless_common::job::{Margin, Pipeline};
use backless_common::limits::ImageLimits;
use clap::{Args, Parser, Subcommand};

use crate::budget::{MemoryBudget, default_budget_bytes};
use crate::imaging::remove_background;
use crate::imaging::{Crop, OutputFormat, OutputOptions, Rgb};
use crate::model::{Arch, Segmenter};

#[derive(Debug, Parser)]
#[command(
    name = "worker",
    version,
    about = "BackLess worker: remove image backgrounds"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Remove the background of image files or folders of images.
    Remove(RemoveArgs),
    /// Run a pipeline of operations (resize, thumbnail, watermark, filters, background removal,
    /// encode) on image files or folders of images.
    Process(ProcessArgs),
    /// Manage model weights.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Serve the push endpoint Cloud Tasks delivers jobs to (configured by BACKLESS_* variables).
    Serve,
    /// Run the pending database migrations and exit (BACKLESS_DATABASE_URL).
    Migrate,
    /// Time the model on one photo (see scripts/bench-model.sh, which compares with onnxruntime).
    Bench(BenchArgs),
    /// Time each image operation on one photo (see scripts/bench-ops.sh, which compares with
    /// Pillow).
    BenchOps(BenchOpsArgs),
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The photo to segment.
    pub photo: PathBuf,
    #[command(flatten)]
    pub model: ModelSelection,
    /// Timed runs after one warm-up run.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
}

#[derive(Debug, Args)]
pub struct BenchOpsArgs {
    /// The photo (decoded once; each operation then runs on a fresh copy).
    pub photo: PathBuf,
    /// Timed runs of each operation (the median is printed).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
}

/// The operations `bench-ops` times, by the names scripts/bench_ops_pillow.py uses for the same
/// work in Pillow.
pub const BENCH_OPS: [(&str, &str); 12] = [
    ("resize_1200", "resize:width=1200"),
    ("thumbnail_256", "thumbnail:size=256"),
    ("watermark", "watermark:text=BackLess sample,opacity=0.6"),
    ("grayscale", "filter:grayscale"),
    ("blur_2", "filter:blur=2"),
    ("sharpen_1", "filter:sharpen=1"),
    ("brightness_1.3", "filter:brightness=1.3"),
    ("contrast_1.3", "filter:contrast=1.3"),
    ("encode_png", "encode:format=png"),
    ("encode_jpeg_90", "encode:format=jpeg,quality=90"),
    ("encode_webp_lossless", "encode:format=webp"),
    ("encode_webp_lossy_80", "encode:format=webp,quality=80"),
];

#[derive(Debug, Args)]
pub struct ModelSelection {
    /// Model to run: u2netp (default, small), u2net or isnet.
    #[arg(long, env = "BACKLESS_MODEL", default_value = "u2netp")]
    pub model: String,
    /// Folder holding `<model>.safetensors` and `<model>.json`.
    #[arg(long, env = "BACKLESS_MODELS_DIR", default_value = "models")]
    pub models_dir: PathBuf,
}

/// How a batch runs: photos in flight at once, within a memory budget.
#[derive(Debug, Args)]
pub struct BatchArgs {
    /// Photos in flight at once: while one is in the network, others decode, composite or
    /// encode (default: one per core).
    #[arg(short, long, value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: Option<u16>,
    /// Memory the photos in flight may hold together, in MiB (default: half of this machine's
    /// or container's memory). Each photo reserves what its plan needs before it is decoded; a
    /// photo larger than the whole budget runs alone.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub memory_mb: Option<u64>,
}

impl BatchArgs {
    fn jobs(&self) -> usize {
        self.jobs.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            usize::from,
        )
    }

    fn budget(&self) -> MemoryBudget {
        MemoryBudget::new(
            self.memory_mb
                .map_or_else(default_budget_bytes, |mb| mb.saturating_mul(1 << 20)),
        )
    }
}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// Image files or folders (searched recursively).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Folder for the results (created if missing).
    #[arg(short, long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub model: ModelSelection,
    /// Output format: png, webp (lossless unless --quality is given) or jpeg (needs --bg-color
    /// or --mask-only).
    #[arg(long, default_value = "png")]
    pub format: OutputFormat,
    /// 1-100: JPEG's quality (default 90), or lossy WebP at this quality (alpha stays
    /// lossless). PNG takes none.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub quality: Option<u8>,
    /// Write the mask alone, as a grayscale image.
    #[arg(long)]
    pub mask_only: bool,
    /// Fill the background with a colour (#rrggbb or a name) instead of transparency.
    #[arg(long)]
    pub bg_color: Option<Rgb>,
    /// Crop to the subject's bounding box.
    #[arg(long)]
    pub crop: bool,
    /// Alpha above which a pixel counts as subject when cropping.
    #[arg(long, default_value_t = Crop::default().threshold)]
    pub crop_threshold: u8,
    /// Space kept around the subject when cropping: pixels or a percentage of the subject,
    /// one, two or four values (`30`, `10%`, `"10% 20"`).
    #[arg(long, default_value = "0")]
    pub crop_margin: Margin,
    /// Keep the photo's colours at soft edges instead of estimating the subject's own (which
    /// removes the old background's halo).
    #[arg(long)]
    pub keep_edge_colours: bool,
    /// Refine the mask by closed-form alpha matting where it is unsure (hair, fur): slower,
    /// and more memory.
    #[arg(long)]
    pub matting: bool,
    /// Largest accepted image, in megapixels.
    #[arg(long, env = "BACKLESS_MAX_MEGAPIXELS", default_value_t = 40.0)]
    pub max_megapixels: f64,
    #[command(flatten)]
    pub batch: BatchArgs,
}

#[derive(Debug, Args)]
pub struct ProcessArgs {
    /// Image files or folders (searched recursively).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Folder for the results (created if missing).
    #[arg(short, long)]
    pub output: PathBuf,
    /// An operation, in order; repeat for a pipeline. For example
    /// `--op remove_background --op resize:width=800 --op watermark:text=Shop --op encode:format=webp`,
    /// `--op thumbnail:size=256`, `--op filter:blur=2.5`. See docs/api.md for every parameter.
    #[arg(long = "op", required = true)]
    pub ops: Vec<String>,
    /// Folder holding `<model>.safetensors` and `<model>.json` (for remove_background).
    #[arg(long, env = "BACKLESS_MODELS_DIR", default_value = "models")]
    pub models_dir: PathBuf,
    /// Largest accepted image, in megapixels.
    #[arg(long, env = "BACKLESS_MAX_MEGAPIXELS", default_value_t = 40.0)]
    pub max_megapixels: f64,
    /// The image `--op backdrop` paints behind every cut-out.
    #[arg(long)]
    pub background: Option<PathBuf>,
    #[command(flatten)]
    pub batch: BatchArgs,
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Convert an ONNX file into `<out>/<name>.safetensors` + `<out>/<name>.json`.
    Import {
        /// The ONNX file.
        onnx: PathBuf,
        /// Its architecture: u2netp, u2net or isnet.
        #[arg(long)]
        arch: Arch,
        /// Name of the written files (defaults to the architecture's name).
        #[arg(long)]
        name: Option<String>,
        /// Output folder.
        #[arg(long, default_value = "models")]
        out: PathBuf,
        /// Refuse the file unless its sha256 is this.
        #[arg(long)]
        sha256: Option<String>,
    },
}

const IMAGE_EXTENSIONS: [&str; 8] = ["png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff"];

/// Files to process: each input file as given, and the images under each folder, with the
/// output path (relative to the output folder) each one gets.
pub fn collect_inputs(inputs: &[PathBuf], ext: &str) -> Vec<(PathBuf, PathBuf)> {
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut found: Vec<_> = walkdir::WalkDir::new(input)
                .into_iter()
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_file())
                .filter(|e| {
                    e.path()
                        .extension()
                        .and_then(|x| x.to_str())
                        .is_some_and(|x| {
                            IMAGE_EXTENSIONS.contains(&x.to_ascii_lowercase().as_str())
                        })
                })
                .map(|e| e.into_path())
                .collect();
            found.sort();
            for path in found {
                let rel = path
                    .strip_prefix(input)
                    .unwrap_or(&path)
                    .with_extension(ext);
                files.push((path, rel));
            }
        } else {
            let name = input.file_stem().map(PathBuf::from).unwrap_or_default();
            files.push((input.clone(), name.with_extension(ext)));
        }
    }
    files
}

/// Process each `(input, relative output)` with `one`, `jobs` files in flight at once,
/// reporting progress on a terminal; a failed file is reported and the batch goes on. Exit code 1
/// if any file failed. Each worker thread reads its file, runs `one` (which holds the file's
/// memory from the shared budget while it decodes, computes and encodes) and writes the result,
/// so reading, the network and encoding of different files overlap.
fn batch(
    files: &[(PathBuf, PathBuf)],
    output: &Path,
    jobs: usize,
    one: impl Fn(&[u8]) -> anyhow::Result<Vec<u8>> + Sync,
) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(output)?;
    let bar = indicatif::ProgressBar::new(files.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {elapsed} {wide_msg}")
            .expect("valid template"),
    );
    let next = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    let work = || {
        while let Some((input, rel)) = files.get(next.fetch_add(1, Ordering::Relaxed)) {
            bar.set_message(input.display().to_string());
            let target = output.join(rel);
            let result = std::fs::read(input)
                .map_err(anyhow::Error::from)
                .and_then(|bytes| one(&bytes))
                .and_then(|out| {
                    if let Some(parent) = target.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    Ok(std::fs::write(&target, out)?)
                });
            if let Err(e) = result {
                failed.fetch_add(1, Ordering::Relaxed);
                bar.suspend(|| eprintln!("error: {}: {e:#}", input.display()));
            }
            bar.inc(1);
        }
    };
    std::thread::scope(|s| {
        for _ in 1..jobs.clamp(1, files.len().max(1)) {
            s.spawn(work);
        }
        work();
    });
    bar.finish_and_clear();
    let failed = failed.into_inner();
    eprintln!(
        "{} of {} file(s) done, {failed} failed; results in {}",
        files.len() - failed,
        files.len(),
        output.display()
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn limits(max_megapixels: f64) -> ImageLimits {
    ImageLimits {
        max_pixels: (max_megapixels * 1e6) as u64,
        // Your own files on your own machine: the pixel limit is the bound you chose.
        max_working_bytes: u64::MAX,
        ..ImageLimits::default()
    }
}

pub fn remove(args: RemoveArgs) -> anyhow::Result<ExitCode> {
    let device = crate::model::default_device()?;
    let seg = Segmenter::load(&args.model.models_dir, &args.model.model, &device)?;
    if args.quality.is_some() && args.format == OutputFormat::Png {
        anyhow::bail!("--quality applies to jpeg and webp (PNG is lossless)");
    }
    let limits = limits(args.max_megapixels);
    let opts = OutputOptions {
        format: args.format,
        quality: args.quality,
        mask_only: args.mask_only,
        bg_color: args.bg_color,
        crop: args.crop.then_some(Crop {
            threshold: args.crop_threshold,
            margin: args.crop_margin,
        }),
        decontaminate: !args.keep_edge_colours,
        matting: args.matting,
    };
    let ext = if args.mask_only && args.format == OutputFormat::Jpeg {
        "jpg"
    } else {
        args.format.extension()
    };
    opts.check()?;
    let ops = opts.operations(&seg.info.name);
    let budget = args.batch.budget();
    let files = collect_inputs(&args.inputs, ext);
    batch(&files, &args.output, args.batch.jobs(), |bytes| {
        let out = crate::imaging::run_within(
            Some(&budget),
            &ops,
            bytes,
            None,
            &limits,
            Some(&seg),
            |_| {},
        )?;
        Ok(out.bytes)
    })
}

/// `worker process`: the same pipelines jobs run, on files.
pub fn process(args: ProcessArgs) -> anyhow::Result<ExitCode> {
    let models: Vec<String> = backless_common::db::job::MODELS
        .iter()
        .map(|m| m.to_string())
        .collect();
    let pipeline =
        Pipeline::parse(&args.ops, &models).map_err(|e| anyhow::anyhow!("{e} ({})", e.code()))?;
    let segmenter = match pipeline.model() {
        Some(name) => {
            let device = crate::model::default_device()?;
            Some(Segmenter::load(&args.models_dir, name, &device)?)
        }
        None => None,
    };
    let limits = limits(args.max_megapixels);
    let background = match (&args.background, pipeline.needs_background()) {
        (Some(path), true) => Some(anyhow::Context::with_context(std::fs::read(path), || {
            format!("reading {}", path.display())
        })?),
        (None, true) => anyhow::bail!("--op backdrop needs --background FILE"),
        (Some(_), false) => anyhow::bail!("--background is for --op backdrop"),
        (None, false) => None,
    };
    let budget = args.batch.budget();
    let files = collect_inputs(&args.inputs, pipeline.format().extension());
    batch(&files, &args.output, args.batch.jobs(), |bytes| {
        let out = crate::imaging::run_within(
            Some(&budget),
            pipeline.operations(),
            bytes,
            background.as_deref(),
            &limits,
            segmenter.as_ref(),
            |_| {},
        )?;
        Ok(out.bytes)
    })
}

/// Peak resident memory of this process so far, in MiB (Linux; 0 elsewhere).
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// User + system CPU time of this process so far, from /proc/self/stat (clock ticks).
fn process_cpu_ms() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
        })
        .map_or(0.0, |ticks| ticks * 10.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One line of JSON: median network time on a fixed input tensor, median whole-pipeline time
/// (decode, resize, network, mask upscale, composite, PNG encode) and peak memory.
pub fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    use std::time::Instant;
    let started = Instant::now();
    let device = crate::model::default_device()?;
    let seg = Segmenter::load(&args.model.models_dir, &args.model.model, &device)?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let bytes = std::fs::read(&args.photo)?;
    let limits = ImageLimits::default();
    let img = crate::imaging::decode(&bytes, &limits)?;
    let input =
        crate::model::io::normalise(&crate::model::io::model_pixels(&img, &seg.info), &seg.info)?;
    let time = |f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<f64> {
        let t = Instant::now();
        f()?;
        Ok(t.elapsed().as_secs_f64() * 1e3)
    };
    let mut forward = || -> anyhow::Result<()> {
        seg.forward(&input)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(())
    };
    let first_ms = time(&mut forward)?;
    let forward_ms = median(
        (0..args.runs)
            .map(|_| time(&mut forward))
            .collect::<Result<_, _>>()?,
    );
    // CPU time of the process per forward pass: unlike wall time, barely moved by other
    // processes sharing the cores (exact with one thread; idle spinning counts with more).
    let cpu0 = process_cpu_ms();
    for _ in 0..args.runs {
        forward()?;
    }
    let forward_cpu_ms = (process_cpu_ms() - cpu0) / args.runs.max(1) as f64;
    let opts = OutputOptions::default();
    let mut pipeline = || -> anyhow::Result<()> {
        remove_background(&seg, &bytes, &limits, &opts)?;
        Ok(())
    };
    let pipeline_ms = median(
        (0..args.runs)
            .map(|_| time(&mut pipeline))
            .collect::<Result<_, _>>()?,
    );
    println!(
        "{}",
        serde_json::json!({
            "runtime": "candle",
            "model": seg.info.name,
            "input_size": seg.info.input_size,
            "threads": rayon::current_num_threads(),
            "load_ms": load_ms,
            "first_forward_ms": first_ms,
            "forward_ms": forward_ms,
            "forward_cpu_ms": forward_cpu_ms,
            "pipeline_ms": pipeline_ms,
            "peak_rss_mib": peak_rss_mib(),
        })
    );
    Ok(ExitCode::SUCCESS)
}

/// One JSON line per operation: the median time over `runs`, single-threaded like Pillow.
pub fn bench_ops(args: BenchOpsArgs) -> anyhow::Result<ExitCode> {
    use backless_common::job::Operation;
    use std::time::Instant;
    let bytes = std::fs::read(&args.photo)?;
    let limits = ImageLimits::default();
    let mut decode_ms = Vec::new();
    let mut img = None;
    for _ in 0..args.runs.max(1) {
        let t = Instant::now();
        img = Some(crate::imaging::decode(&bytes, &limits)?);
        decode_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let img = img.expect("decoded at least once");
    let line = |name: &str, ms: f64| {
        println!(
            "{}",
            serde_json::json!({"tool": "backless", "op": name, "ms": ms, "width": img.width(), "height": img.height()})
        );
    };
    line("decode_jpeg", median(decode_ms));
    for (name, text) in BENCH_OPS {
        let op: Operation = text.parse().map_err(|e| anyhow::anyhow!("{text}: {e}"))?;
        let mut times = Vec::new();
        for _ in 0..args.runs.max(1) {
            let mut work = crate::imaging::Work::new(img.clone());
            let t = Instant::now();
            crate::imaging::apply(&mut work, &op, None, &mut |_| {})?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        line(name, median(times));
    }
    Ok(ExitCode::SUCCESS)
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// The push service alone (production: Cloud Run or Kubernetes behind Cloud Tasks).
pub fn serve() -> anyhow::Result<ExitCode> {
    let config = crate::config::WorkerConfig::from_env()?;
    runtime()?.block_on(async {
        let app = crate::server::App::build(config).await?;
        app.run_until_stopped(backless_common::shutdown::signal())
            .await?;
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Remove(args) => remove(args),
        Command::Process(args) => process(args),
        Command::Bench(args) => bench(args),
        Command::BenchOps(args) => bench_ops(args),
        Command::Serve => serve(),
        Command::Migrate => {
            let config = crate::config::WorkerConfig::from_env()?;
            let applied =
                runtime()?.block_on(backless_common::db::migrate(&config.common.database))?;
            backless_common::db::report_migrations(&applied);
            Ok(ExitCode::SUCCESS)
        }
        Command::Model(ModelCommand::Import {
            onnx,
            arch,
            name,
            out,
            sha256,
        }) => {
            let name = name.unwrap_or_else(|| arch.name().to_string());
            let info =
                crate::model::onnx::import_file(&onnx, arch, &name, &out, sha256.as_deref())?;
            eprintln!(
                "imported {} ({}, input {}x{}) into {}",
                info.name,
                info.arch,
                info.input_size,
                info.input_size,
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
