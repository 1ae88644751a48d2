//! `blindsight`: the command line. Each subcommand is a thin wrapper over the library.

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use std::time::{Duration, Instant};

use blindsight_server::api::listener::{self, ConnLimits};
use blindsight_server::api::routes::router;
use blindsight_server::api::{AppState, ServeConfig};
use blindsight_server::bench::{self, BenchReport, Session};
use blindsight_server::cifar;
use blindsight_server::contract::client_contract;
use blindsight_server::he::bsgs::{sum_rotation_count, LinearPlan};
use blindsight_server::he::infer::evaluate;
use blindsight_server::he::plan::{Plan, StepKind};
use blindsight_server::image_input::model_input;
use blindsight_server::load::{LoadConfig, LoadImage};
use blindsight_server::model::Model;
use blindsight_server::plain::{forward, softmax};
use blindsight_server::remote::{Progress, RemoteSession};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(
    name = "blindsight",
    version,
    about = "Private image classification with CKKS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Classify an image and print the class probabilities.
    Classify(ClassifyArgs),
    /// Benchmark the encrypted pipeline on CIFAR-10 test images: latency per layer, memory, key
    /// sizes, agreement with the plaintext model and accuracy.
    Bench(BenchArgs),
    /// Print the homomorphic evaluation plan: layouts, levels, rotations and keys per layer.
    Plan(PlanArgs),
    /// Serve the HTTP API and the web page: clients upload evaluation keys and encrypted images,
    /// the server returns encrypted logits. It never sees an image, a label or a secret key.
    Serve(ServeArgs),
    /// Load a running server: K sessions upload keys at once, then J jobs go in at once (more
    /// than its queue holds). Checks that every job finishes once with the plaintext label and
    /// reports 503s, Retry-After and the server's memory against its budgets (JSON).
    Load(LoadArgs),
}

#[derive(Args)]
struct LoadArgs {
    /// The server, e.g. http://127.0.0.1:8080
    #[arg(long, value_name = "URL")]
    server: String,
    /// Sessions opened at once, each uploading every key.
    #[arg(long, default_value_t = 4)]
    sessions: usize,
    /// Jobs submitted at once, spread over the sessions.
    #[arg(long, default_value_t = 12)]
    jobs: usize,
    /// CIFAR-10 directory the images come from (test batch records 0, 1, ...).
    #[arg(long, value_name = "DIR", default_value = "../shared/data/cifar10")]
    data: PathBuf,
    /// Distinct images used, cycled over the jobs.
    #[arg(long, default_value_t = 4)]
    images: usize,
    /// The model the server runs, for the plaintext labels [default: the built-in model].
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Write the report as JSON to FILE as well.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// Model directory [default: the built-in model].
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Where session keys are stored (they survive a restart until they expire).
    #[arg(long, value_name = "DIR", default_value = "blindsight-data")]
    data_dir: PathBuf,
    /// The page's directory [default: web/ if it exists].
    #[arg(long, value_name = "DIR")]
    web: Option<PathBuf>,
    /// CKKS parameter set.
    #[arg(long, default_value = "N16_L39")]
    params: String,
    /// Jobs evaluated at the same time.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Jobs waiting at most; beyond, submissions get 503 with Retry-After.
    #[arg(long, default_value_t = 8)]
    queue: usize,
    /// Most images in one job: a job's images share ciphertexts where one image leaves slots
    /// idle (1 turns batches off).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=64))]
    max_batch: u64,
    /// Threads of the evaluation pool [default: all cores].
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Sessions held at most (each is 164 MB on disk for ResNet-20).
    #[arg(long, default_value_t = 16)]
    max_sessions: usize,
    /// Seconds an idle session is kept.
    #[arg(long, default_value_t = 3600)]
    session_ttl: u64,
    /// MB of evaluation keys kept loaded in memory (least recently used sessions are unloaded
    /// first; their keys stay on disk).
    #[arg(long, default_value_t = 2048)]
    key_memory_mb: u64,
    /// MB that request bodies being read may hold at once (beyond, uploads wait, then get 503).
    #[arg(long, default_value_t = 512)]
    upload_memory_mb: u64,
    /// Connections served at once (more wait in the kernel's backlog).
    #[arg(long, default_value_t = 256)]
    max_connections: usize,
    /// Seconds a client has to send a request's headers.
    #[arg(long, default_value_t = 20)]
    header_timeout: u64,
    /// Seconds an upload may send nothing before it is cut off (408).
    #[arg(long, default_value_t = 30)]
    body_idle_timeout: u64,
    /// Seconds an upload may take in all.
    #[arg(long, default_value_t = 600)]
    upload_timeout: u64,
}

#[derive(Args)]
struct PlanArgs {
    /// Model directory [default: the built-in model].
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// CKKS parameter set.
    #[arg(long, default_value = "N16_L39")]
    params: String,
    /// Images evaluated together: shows where each stage packs them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    batch: u64,
}

#[derive(Args)]
struct ClassifyArgs {
    /// Classify IMAGE (PNG or JPEG, any size) encrypted: keys, encryption, the homomorphic network,
    /// decryption, all in this process (the way to try the system without a browser).
    #[arg(
        value_name = "IMAGE",
        required_unless_present = "plaintext",
        conflicts_with = "plaintext"
    )]
    image: Option<PathBuf>,
    /// Classify IMAGE in the clear, with the f64 reference forward pass.
    #[arg(long, value_name = "IMAGE")]
    plaintext: Option<PathBuf>,
    /// Model directory holding manifest.json and weights.safetensors [default: the built-in model].
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// CKKS parameter set for the encrypted path.
    #[arg(long, default_value = "N16_L39")]
    params: String,
    /// Classify through a running server (`blindsight serve`) at URL: keys and encryption are
    /// made here, only ciphertexts and public keys are sent.
    #[arg(long, value_name = "URL", conflicts_with = "plaintext")]
    server: Option<String>,
    /// More images to classify through the server, reusing the session's keys: they go in jobs
    /// of up to the server's batch (`batch.max` in its contract), which share ciphertexts.
    #[arg(value_name = "MORE", requires = "server")]
    more: Vec<PathBuf>,
}

#[derive(Args)]
struct BenchArgs {
    /// CIFAR-10 directory (with jpeg75/test_batch.bin and exact_prefix/).
    #[arg(long, value_name = "DIR", default_value = "../shared/data/cifar10")]
    data: PathBuf,
    /// Number of test images.
    #[arg(long, default_value_t = 1)]
    images: usize,
    /// Skip this many test images first.
    #[arg(long, default_value_t = 0)]
    skip: usize,
    /// Use the true-pixel test images (exact_prefix) instead of the JPEG-75 test batch.
    #[arg(long)]
    exact: bool,
    /// Worker threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Model directory [default: the built-in model].
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// CKKS parameter set.
    #[arg(long, default_value = "N16_L39")]
    params: String,
    /// Also evaluate the images in batches of B (one job, shared ciphertexts), each batch right
    /// after the single-image runs of its images, and report both.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    batch: u64,
    /// Decrypt every step's value and report its largest error against the plaintext model (a
    /// precision diagnostic; the decryptions count in the step times).
    #[arg(long)]
    layer_errors: bool,
}

/// Errors print as one line with their context chain (`a: b: c`), whatever RUST_BACKTRACE says.
fn main() -> ExitCode {
    blindsight_core::memory::keep_freed_memory();
    let result = match Cli::parse().command {
        Command::Classify(args) => classify(&args),
        Command::Plan(args) => plan(&args),
        Command::Bench(args) => bench(&args),
        Command::Serve(args) => serve(&args),
        Command::Load(args) => load(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_model(dir: Option<&Path>) -> anyhow::Result<Model> {
    match dir {
        Some(dir) => {
            Model::from_dir(dir).with_context(|| format!("loading model from {}", dir.display()))
        }
        None => Model::embedded().context("loading the built-in model"),
    }
}

fn classify(args: &ClassifyArgs) -> anyhow::Result<()> {
    if let Some(url) = &args.server {
        return classify_remote(url, args);
    }
    let model = load_model(args.model.as_deref())?;
    let path = args
        .plaintext
        .as_ref()
        .or(args.image.as_ref())
        .context("no image given")?;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let input =
        model_input(&bytes, &model).with_context(|| format!("reading {}", path.display()))?;
    let (logits, timings) = if args.plaintext.is_some() {
        (forward(&model, &input)?, String::new())
    } else {
        let t0 = Instant::now();
        let session = Session::new(&model, &args.params, 1)?;
        let setup = t0.elapsed();
        let t1 = Instant::now();
        let ct = session.client.encrypt_tensor(&input)?;
        let encrypt = t1.elapsed();
        let ev = blindsight_core::Evaluator::new(&session.ctx);
        let bar = step_bar(session.plan.steps.len() as u64, "evaluating");
        let t2 = Instant::now();
        let (out, _) = evaluate(&session.plan, &ev, &session.keys, &ct, |i, _, _| {
            bar.set_position(i as u64)
        })?;
        let eval = t2.elapsed();
        bar.finish_and_clear();
        let t3 = Instant::now();
        let logits = session.client.decrypt_logits(&out)?;
        let decrypt = t3.elapsed();
        let timings = format!(
            "encrypted with {} ({} rotation keys, {:.1} MB of evaluation keys)\n\
             timings: keys {:.2} s, encrypt {:.2} s, encrypted network {:.2} s, decrypt {:.3} s\n",
            session.plan.params,
            session.plan.rotations.len(),
            session.contract.key_bytes() as f64 / 1e6,
            setup.as_secs_f64(),
            encrypt.as_secs_f64(),
            eval.as_secs_f64(),
            decrypt.as_secs_f64()
        );
        (logits, timings)
    };
    let classes = &model.metadata().classes;
    let mut ranked: Vec<(&str, f64)> = classes
        .iter()
        .map(String::as_str)
        .zip(softmax(&logits))
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let width = classes.iter().map(String::len).max().unwrap_or(0);
    let Some(&(label, _)) = ranked.first() else {
        anyhow::bail!("the model has no classes");
    };
    let mut report = format!("model: {}\nlabel: {label}\n", model.metadata().name);
    for (class, p) in &ranked {
        report += &format!("  {class:width$}  {p:.4}\n");
    }
    report += &timings;
    print_stdout(&report)
}

/// `classify --server`: a session on the server, every key uploaded once, then each image.
fn classify_remote(url: &str, args: &ClassifyArgs) -> anyhow::Result<()> {
    let images: Vec<&PathBuf> = args.image.iter().chain(&args.more).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{elapsed_precise}] {bar:40} {bytes}/{total_bytes}",
            )
            .expect("static template"),
        );
        bar.set_message("uploading keys");
        let t0 = Instant::now();
        let session = RemoteSession::open(url, |p| {
            if let Progress::Key { bytes, total, .. } = p {
                bar.set_length(total as u64);
                bar.set_position(bytes as u64);
            }
        })
        .await
        .with_context(|| format!("opening a session on {url}"))?;
        bar.finish_and_clear();
        let contract = session.client.contract();
        eprintln!(
            "session {} on {url}: {} keys, {:.1} MB uploaded in {:.1} s",
            session.id,
            contract.keys.len(),
            contract.key_bytes() as f64 / 1e6,
            t0.elapsed().as_secs_f64()
        );
        let mut report = String::new();
        // several images go in jobs of up to the contract's batch, sharing ciphertexts
        let max = contract.batch.max.max(1);
        for chunk in images.chunks(max) {
            let mut decoded = Vec::with_capacity(chunk.len());
            for path in chunk {
                let bytes =
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                let rgba = blindsight_server::image_input::decode_rgba(&bytes)
                    .with_context(|| format!("reading {}", path.display()))?;
                decoded.push(rgba);
            }
            let inputs: Vec<(&[u8], u32, u32)> = decoded
                .iter()
                .map(|im| (im.as_raw().as_slice(), im.width(), im.height()))
                .collect();
            let names: Vec<String> = chunk.iter().map(|p| p.display().to_string()).collect();
            let bar = step_bar(0, "server");
            let t1 = Instant::now();
            let (predictions, _) = session
                .classify_many(&inputs, |p| {
                    if let Progress::Event(e) = p {
                        match e.event.as_str() {
                            "queued" => {
                                bar.set_message(format!("queued ({} ahead)", e.data["position"]))
                            }
                            "started" => {
                                bar.set_message("evaluating");
                                bar.set_length(e.data["layers"].as_u64().unwrap_or(0));
                            }
                            "layer" => bar.set_position(e.data["index"].as_u64().unwrap_or(0)),
                            _ => {}
                        }
                    }
                })
                .await
                .with_context(|| format!("classifying {}", names.join(", ")))?;
            bar.finish_and_clear();
            let seconds = t1.elapsed().as_secs_f64();
            for (name, prediction) in names.iter().zip(&predictions) {
                report += &format!(
                    "{name}: {} ({:.4}), {seconds:.1} s{}\n",
                    prediction.label,
                    prediction.probabilities[prediction.index],
                    if chunk.len() > 1 {
                        format!(" for a job of {} images", chunk.len())
                    } else {
                        String::new()
                    }
                );
            }
        }
        // the session's keys are of no further use to anyone
        let _ = session
            .remote
            .send(
                hyper::Method::DELETE,
                &format!("/api/sessions/{}", session.id),
                Vec::new(),
            )
            .await;
        print_stdout(&report)
    })
}

fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,tower_http=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let model = load_model(args.model.as_deref())?;
    let web = args
        .web
        .clone()
        .or_else(|| Some(PathBuf::from("web")).filter(|p| p.is_dir()));
    let config = ServeConfig {
        params: args.params.clone(),
        data_dir: args.data_dir.clone(),
        web_dir: web,
        jobs: args.jobs,
        queue: args.queue,
        max_batch: args.max_batch as usize,
        threads: args.threads,
        max_sessions: args.max_sessions,
        session_ttl: Duration::from_secs(args.session_ttl),
        // at least twice per TTL, so that a session is gone within 1.5 TTLs of its last use
        sweep_every: Duration::from_secs(args.session_ttl.div_ceil(2).clamp(1, 30)),
        key_memory: args.key_memory_mb << 20,
        upload_memory: args.upload_memory_mb << 20,
        body_idle_timeout: Duration::from_secs(args.body_idle_timeout),
        upload_timeout: Duration::from_secs(args.upload_timeout),
        connections: ConnLimits {
            max_connections: args.max_connections,
            header_timeout: Duration::from_secs(args.header_timeout),
            ..ConnLimits::default()
        },
        ..ServeConfig::default()
    };
    let limits = config.connections.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let state = AppState::new(&model, config)?;
        state.spawn_sweeper();
        let listener = tokio::net::TcpListener::bind(&args.addr)
            .await
            .with_context(|| format!("listening on {}", args.addr))?;
        let addr = listener.local_addr()?;
        println!(
            "Blindsight is serving {} at http://{addr}/",
            state.model_name
        );
        let m = state.memory_limits();
        tracing::info!(
            "memory beyond the model and running evaluations: at most {} MB (keys {} MB, \
             uploads {} MB, queued inputs {} MB)",
            m["total"].as_u64().unwrap_or(0) >> 20,
            m["key_memory_budget"].as_u64().unwrap_or(0) >> 20,
            m["upload_budget"].as_u64().unwrap_or(0) >> 20,
            m["queued_inputs"].as_u64().unwrap_or(0) >> 20,
        );
        listener::serve(listener, router(state), limits, shutdown_signal()).await?;
        Ok(())
    })
}

fn load(args: &LoadArgs) -> anyhow::Result<()> {
    let model = std::sync::Arc::new(load_model(args.model.as_deref())?);
    cifar::check_model(&model)?;
    let records = cifar::read(&cifar::test_batch(&args.data, false), 0, args.images.max(1))?;
    let images = records
        .iter()
        .map(|r| {
            let plane = cifar::SIDE * cifar::SIDE;
            let rgba = (0..plane)
                .flat_map(|i| {
                    [
                        r.pixels[i],
                        r.pixels[plane + i],
                        r.pixels[2 * plane + i],
                        255,
                    ]
                })
                .collect();
            LoadImage {
                rgba,
                width: cifar::SIDE as u32,
                height: cifar::SIDE as u32,
            }
        })
        .collect();
    let config = LoadConfig {
        server: args.server.clone(),
        sessions: args.sessions.max(1),
        jobs: args.jobs,
        images,
        model,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(blindsight_server::load::run(config))?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.json {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{json}");
    if !report.all_good() {
        anyhow::bail!("the server lost, repeated or mislabelled jobs under load (see the report)");
    }
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

fn step_bar(len: u64, msg: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{elapsed_precise}] {bar:40} {pos}/{len}")
            .expect("static template"),
    );
    bar.set_message(msg);
    bar
}

fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .context("starting the thread pool")?;
    let model = load_model(args.model.as_deref())?;
    // before the keys are made: the records are fed to the model as they are, without resizing
    cifar::check_model(&model)?;
    let path = cifar::test_batch(&args.data, args.exact);
    let records = cifar::read(&path, args.skip, args.images)?;
    if records.is_empty() {
        anyhow::bail!(
            "no images in {} after skipping {}",
            path.display(),
            args.skip
        );
    }
    eprintln!(
        "{} images from {}, {threads} threads, parameters {}",
        records.len(),
        path.display(),
        args.params
    );
    let mut session = Session::new(&model, &args.params, args.batch as usize)?;
    session.check_layers = args.layer_errors;
    eprintln!(
        "keys: {:.2} s for the {} uploaded keys, {:.1} MB; {} more derived by the server in \
         {:.2} s",
        session.keygen.as_secs_f64(),
        session.contract.keys.len(),
        session.contract.key_bytes() as f64 / 1e6,
        session.plan.keys.derived.len(),
        session.derive.as_secs_f64()
    );
    let steps = session.plan.steps.len() as u64;
    let bar = step_bar(steps * records.len() as u64, "images");
    let mut results = Vec::with_capacity(records.len());
    // the largest batch's plan serves every batch, as in the server
    if args.batch > 1 && session.batch_plan.is_none() {
        anyhow::bail!("this model and parameter set evaluate one image per job");
    }
    let batch = session.batch_plan.as_ref().map_or(1, |p| p.batch);
    let mut batch_results = Vec::new();
    for (k, rec) in records.iter().enumerate() {
        let input = rec.model_input(&model)?;
        let r = session.run(&model, &input, rec.label, |i, _| {
            bar.set_position(k as u64 * steps + i as u64)
        })?;
        // the bar hides itself when stderr is no terminal; the per-image lines stay
        let line = format!(
            "image {}: label {} plaintext {} encrypted {}, {:.2} s, logit error {:.1e}",
            args.skip + k,
            r.label,
            r.plain_label,
            r.he_label,
            r.eval.as_secs_f64(),
            r.max_abs_logit_error
        );
        if bar.is_hidden() {
            eprintln!("{line}");
        } else {
            bar.println(line);
        }
        results.push(r);
        let done = k + 1;
        if batch > 1 && (done % batch == 0 || done == records.len()) {
            let first = (done - 1) / batch * batch;
            let inputs = records[first..done]
                .iter()
                .map(|rec| rec.model_input(&model))
                .collect::<Result<Vec<_>, _>>()?;
            let plan = session.batch_plan.as_ref().expect("checked above");
            let b = session.run_batch(&model, plan, &inputs, |_, _| {})?;
            let line = format!(
                "batch of images {}-{}: {:.2} s ({:.2} s an image), labels {:?}, logit error {:.1e}",
                args.skip + first,
                args.skip + done - 1,
                b.eval.as_secs_f64(),
                b.eval.as_secs_f64() / inputs.len() as f64,
                b.he_labels,
                b.max_abs_logit_error
            );
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
            batch_results.push((first, b));
        }
    }
    bar.finish_and_clear();
    let mut report = bench::report(&session, &model, &results, threads)?;
    if !batch_results.is_empty() {
        report.batch = Some(bench::batch_report(&results, &batch_results, batch));
    }
    print_stdout(&bench_table(&report))?;
    if let Some(file) = &args.json {
        // through a `Value`, whose map sorts the keys: the file reads as it always has
        let json = serde_json::to_string_pretty(&serde_json::to_value(&report)?)?;
        std::fs::write(file, json + "\n").with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(())
}

/// The bench report as text: a row per layer, then the totals as `key: value` lines, values written
/// as in the JSON file.
fn bench_table(report: &BenchReport) -> String {
    let mut out = format!(
        "{:<24} {:>6} {:>9} {:>5} {:>7} {:>5} {:>6} {:>5}",
        "layer", "kind", "time (s)", "level", "log2 sc", "rots", "pmults", "mults"
    );
    let errors = report.layers.iter().any(|l| l.max_error.is_some());
    if errors {
        out += &format!(" {:>9}", "max error");
    }
    out += "\n";
    for l in &report.layers {
        out += &format!(
            "{:<24} {:>6} {:>9.3} {:>5} {:>7.1} {:>5} {:>6} {:>5}",
            l.name,
            l.kind,
            l.seconds,
            l.level,
            l.log2_scale,
            l.rotations,
            l.plain_mults,
            l.ct_mults
        );
        if let (true, Some(e)) = (errors, l.max_error) {
            out += &format!(" {e:>9.2e}");
        }
        out += "\n";
    }
    let totals = [
        ("images", json(report.images)),
        ("threads", json(report.threads)),
        ("latency_s", json(report.latency_s)),
        ("encrypt_s", json(report.encrypt_s)),
        ("decrypt_s", json(report.decrypt_s)),
        ("keygen_s", json(report.keygen_s)),
        ("eval_key_bytes", json(report.eval_key_bytes)),
        ("rotation_keys", json(report.rotation_keys)),
        ("derived_keys", json(report.derived_keys)),
        ("derive_s", json(report.derive_s)),
        ("key_memory_bytes", json(report.key_memory_bytes)),
        ("ciphertext_bytes", json(report.ciphertext_bytes)),
        ("peak_rss_bytes", json(report.peak_rss_bytes)),
        ("max_abs_logit_error", json(report.max_abs_logit_error)),
        ("agreement", json(report.agreement)),
        ("accuracy", json(report.accuracy)),
        ("plaintext_accuracy", json(report.plaintext_accuracy)),
    ];
    for (key, value) in totals {
        out += &format!("{key}: {value}\n");
    }
    if let Some(b) = &report.batch {
        // the batch's layers as a table of their own; the line keeps the totals
        let mut totals = b.clone();
        let layers = std::mem::take(&mut totals.seconds_by_layer);
        out += &format!("batch: {}\n", json(&totals));
        out += &format!(
            "batch of {} images, per layer (summed over its ciphertexts):\n",
            b.size
        );
        for (name, s) in layers {
            out += &format!("  {name:<24} {s:>9.3}\n");
        }
    }
    out
}

/// A value as JSON writes it (`1.0`, `null`), so that the printed totals match the JSON file.
fn json(value: impl serde::Serialize) -> String {
    serde_json::to_string(&value).expect("numbers and options serialize")
}

fn plan(args: &PlanArgs) -> anyhow::Result<()> {
    let model = load_model(args.model.as_deref())?;
    let ctx = blindsight_core::Context::named(&args.params)
        .with_context(|| format!("parameter set {}", args.params))?;
    let plan = Plan::batched(&model, &ctx, args.batch as usize)?;
    let key_bytes = client_contract(&model, &plan, &ctx)?.key_bytes();
    print_stdout(&describe_plan(&plan, &ctx, key_bytes))
}

/// The plan as a table: one row per step, then the keys.
fn describe_plan(plan: &Plan, ctx: &blindsight_core::Context, key_bytes: usize) -> String {
    let p = ctx.params();
    let mut s = format!(
        "parameters {}: N = {}, {} levels, log2(QP) = {:.1} (128-bit bound {}); input at level {}, scale 2^{:.0}\n",
        plan.params,
        ctx.n(),
        ctx.max_level(),
        p.log_qp(),
        blindsight_core::params::max_log_qp_128(p.log_n()).unwrap_or(f64::NAN),
        plan.input_level,
        plan.input_scale.log2()
    );
    let batched = plan.batch > 1;
    if batched {
        s += &format!(
            "batch of {} images: a step per ciphertext (group g holds images from g x per-ct); \
             images of one ciphertext sit at the layout shifted by each of `shifts` slots\n",
            plan.batch
        );
    }
    s += &format!(
        "{:<24} {:>6} {:>5} {:>6} {:>6} {:>6} {:>6} {:>11}  layout\n",
        if batched { "step [group]" } else { "step" },
        "kind",
        "level",
        "babies",
        "giants",
        "rots",
        "diags",
        "pack"
    );
    let (mut rots, mut diags) = (0, 0);
    for st in &plan.steps {
        let (kind, b, g, r, d, pack) = match &st.kind {
            StepKind::Linear { lin, .. } => (
                "linear",
                lin.babies.len(),
                lin.giants,
                lin.rotation_count(),
                lin.diags().len(),
                pack_label(&[lin]),
            ),
            StepKind::LinearSum { terms } => {
                let plans: Vec<_> = terms.iter().map(|(_, l)| l).collect();
                (
                    "lin+add",
                    plans.iter().map(|l| l.babies.len()).sum(),
                    plans.iter().map(|l| l.giants).max().unwrap_or(0),
                    sum_rotation_count(&plans),
                    plans.iter().map(|l| l.diags().len()).sum(),
                    pack_label(&plans),
                )
            }
            StepKind::Activation { .. } => ("square", 0, 0, 0, 0, String::new()),
            StepKind::Add { .. } => ("add", 0, 0, 0, 0, String::new()),
            StepKind::Pool { amounts, .. } => ("pool", 0, 0, amounts.len(), 0, String::new()),
        };
        let pack = if d == 0 { String::new() } else { pack };
        rots += r;
        diags += d;
        let l = &st.value.layout;
        let name = if batched {
            format!("{} [{}]", st.name, st.group)
        } else {
            st.name.clone()
        };
        s += &format!(
            "{name:<24} {kind:>6} {:>5} {b:>6} {g:>6} {r:>6} {d:>6} {pack:>11}  {}x{}x{} gap {} blocks {} offset {}",
            st.value.level, l.channels(), l.height(), l.width(), l.gap(), l.blocks(), l.offset()
        );
        if batched {
            s += &format!(
                "; {} per ct, shifts {:?}{}",
                st.value.capacity(),
                st.value.shifts,
                if st.value.lanes == 2 {
                    " x (re, im)"
                } else {
                    ""
                }
            );
        }
        s += "\n";
    }
    s += &format!("total: {rots} rotations, {diags} plaintext multiplications\n");
    s += "pack: real, or cplx (complex packing); +GG: its Horner step as two rotations by G (no \
          key for 2G at that level); +R: its real part taken after the rescale; +Cs: replicas, a \
          copy of the input s slots on takes the second half of the giant steps\n";
    if batched {
        s += &describe_packing(plan);
    }
    s += &format!("rotation keys uploaded ({}):", plan.keys.uploaded.len());
    for (a, l) in &plan.keys.uploaded {
        s += &format!(" {a}@{l}");
    }
    s += &format!(
        "\nrotation keys derived by the server ({}):",
        plan.keys.derived.len()
    );
    for (a, l) in &plan.keys.derived {
        s += &format!(" {a}@{l}");
    }
    if let Some(l) = plan.conj_level {
        s += &format!("\nconjugation key uploaded (complex packing, a batch's pairs): @{l}");
    }
    s += &format!(
        "\nevaluation keys uploaded: {:.1} MB (relinearization at level {:?})\n",
        key_bytes as f64 / 1e6,
        plan.relin_level
    );
    s
}

/// How the linear layers of one step pack (see [`LinearPlan`]'s `complex`, `split_step` and
/// `real_after_rescale`).
fn pack_label(plans: &[&LinearPlan]) -> String {
    let base = match plans.iter().find(|l| l.complex) {
        None => "real",
        Some(l) => match (l.split_step, l.real_after_rescale) {
            (false, false) => "cplx",
            (true, false) => "cplx+GG",
            (false, true) => "cplx+R",
            (true, true) => "cplx+GG+R",
        },
    };
    match plans.iter().find_map(|l| l.replicas) {
        Some(r) => format!("{base}+C{}", r.shift),
        None => base.to_string(),
    }
}

/// A batch's layout per stage: runs of model nodes whose values pack the images alike.
fn describe_packing(plan: &Plan) -> String {
    let mut firsts: Vec<&blindsight_server::he::plan::Step> =
        plan.steps.iter().filter(|st| st.group == 0).collect();
    firsts.sort_by_key(|st| st.node);
    firsts.dedup_by_key(|st| st.node);
    let mut s = format!("batch layout per stage ({} images):\n", plan.batch);
    let mut i = 0;
    while i < firsts.len() {
        let v = &firsts[i].value;
        let key = (v.layout.gap(), v.shifts.clone(), v.lanes);
        let mut j = i;
        while j + 1 < firsts.len()
            && (
                firsts[j + 1].value.layout.gap(),
                firsts[j + 1].value.shifts.clone(),
                firsts[j + 1].value.lanes,
            ) == key
        {
            j += 1;
        }
        let l = &v.layout;
        let groups = plan.batch.div_ceil(v.capacity());
        let pairs = if v.lanes == 2 {
            " (each shift a pair: real and imaginary parts)"
        } else {
            ""
        };
        s += &format!(
            "  {} .. {}: {}x{}x{} gap {}, {} image(s) per ciphertext at shifts {:?}{pairs}, {} ciphertext(s)\n",
            firsts[i].name,
            firsts[j].name,
            l.channels(),
            l.height(),
            l.width(),
            l.gap(),
            v.capacity(),
            v.shifts,
            groups
        );
        i = j + 1;
    }
    s
}

/// Writes to stdout; a reader that stopped early (`| head`) is not an error.
fn print_stdout(text: &str) -> anyhow::Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(()),
    }
}
