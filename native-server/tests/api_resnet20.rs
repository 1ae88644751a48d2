//! The product's whole flow through real HTTP on an ephemeral port: `blindsight serve`'s state
//! with the embedded ResNet-20 at N16_L39, and the native client (`classify --server`'s code)
//! making every key, uploading it, encrypting two CIFAR-10 test images (PNG files made here),
//! following the progress events and decrypting the answers. Each label must equal `classify
//! --plaintext`'s for that file. About two minutes on two cores.

use std::path::PathBuf;

use blindsight_server::api::routes::router;
use blindsight_server::api::{AppState, ServeConfig};
use blindsight_server::image_input::{decode_rgba, model_input};
use blindsight_server::model::Model;
use blindsight_server::remote::{Progress, RemoteSession};
use blindsight_server::{cifar, plain};

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/cifar10")
}

/// A CIFAR record as a PNG file's bytes.
fn png(record: &cifar::Record) -> Vec<u8> {
    let plane = 32 * 32;
    let rgb: Vec<u8> = (0..plane)
        .flat_map(|i| (0..3).map(move |c| (c, i)))
        .map(|(c, i)| record.pixels[c * plane + i])
        .collect();
    let img = image::RgbImage::from_raw(32, 32, rgb).unwrap();
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the whole ResNet-20: scripts/test.sh runs it optimized (--release --include-ignored)"]
async fn two_images_through_http_match_the_plaintext_labels() {
    blindsight_core::memory::keep_freed_memory();
    let model = Model::embedded().unwrap();
    let records = cifar::read(&cifar::test_batch(&data_dir(), false), 0, 16)
        .unwrap_or_else(|e| panic!("the test needs the CIFAR-10 test images: {e}"));
    // two images whose plaintext top-2 margin is clear of the encrypted error (about 0.06)
    let files: Vec<(Vec<u8>, usize)> = records
        .iter()
        .map(png)
        .filter_map(|file| {
            let mut l = plain::forward(&model, &model_input(&file, &model).unwrap()).unwrap();
            let label = blindsight_client::argmax(&l);
            l.sort_by(|a, b| b.total_cmp(a));
            (l[0] - l[1] > 1.0).then_some((file, label))
        })
        .take(2)
        .collect();
    assert_eq!(files.len(), 2);

    let dir = std::env::temp_dir().join(format!("blindsight-api-resnet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = ServeConfig {
        data_dir: dir.clone(),
        ..ServeConfig::default()
    };
    let state = AppState::new(&model, config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = router(state.clone());
    let server = tokio::spawn(async move {
        blindsight_server::api::listener::serve(
            listener,
            app,
            Default::default(),
            std::future::pending(),
        )
        .await
        .unwrap()
    });

    let mut uploaded = Vec::new();
    let session = RemoteSession::open(&url, |p| {
        if let Progress::Key {
            k, bytes, total, ..
        } = p
        {
            uploaded.push((k, bytes, total));
        }
    })
    .await
    .unwrap();
    let n = session.client.contract().keys.len();
    assert_eq!(uploaded.len(), n);
    assert_eq!(
        uploaded.last().unwrap().1,
        session.client.contract().key_bytes()
    );

    for (file, plaintext_label) in &files {
        let rgba = decode_rgba(file).unwrap();
        let (prediction, events) = session
            .classify_rgba(rgba.as_raw(), rgba.width(), rgba.height(), |_| {})
            .await
            .unwrap();
        assert_eq!(prediction.index, *plaintext_label, "{prediction:?}");
        assert_eq!(prediction.label, model.metadata().classes[*plaintext_label]);
        let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(&names[..2], ["queued", "started"]);
        assert_eq!(*names.last().unwrap(), "done");
        let layers: Vec<u64> = events
            .iter()
            .filter(|e| e.event == "layer")
            .map(|e| e.data["index"].as_u64().unwrap())
            .collect();
        assert_eq!(layers, (1..=layers.len() as u64).collect::<Vec<_>>());
        assert_eq!(
            layers.len() as u64,
            events[1].data["layers"].as_u64().unwrap()
        );
    }
    server.abort();
    state.queue.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
