//! Any PNG or JPEG to the model's input: decode (grayscale, alpha, palette, 16-bit, EXIF orientation),
//! composite transparency over white, center-crop to the input's aspect ratio, resize with an
//! antialiasing filter, normalize through `blindsight_core::layout`.
//!
//! Image files come from users, so decoded sizes are capped before any pixel buffer is allocated: a
//! small file that claims enormous dimensions is refused, not decoded, and the decoders run with
//! explicit limits (sides of [`MAX_SIDE`], [`MAX_DECODE_BYTES`] of allocations, output included).
//! As in `model`, errors carry their cause in the message rather than as a `source`.

use std::io::Cursor;

use blindsight_client::image::{fit_rgb, over_white};
pub use blindsight_client::image::{MAX_PIXELS, MAX_SIDE};
use blindsight_core::layout::LayoutError;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};

use crate::model::Model;

/// Why an image could not be turned into a model input.
#[derive(Debug, thiserror::Error)]
pub enum ImageInputError {
    #[error("the image file is empty")]
    Empty,
    #[error("not a PNG or JPEG image")]
    UnsupportedFormat,
    #[error("the image is {width}x{height}; at most {MAX_SIDE} pixels per side and {MAX_PIXELS} pixels in all are accepted")]
    TooLarge { width: u32, height: u32 },
    #[error("the image has no pixels ({width}x{height})")]
    NoPixels { width: u32, height: u32 },
    #[error("the image exceeds the decoder's limits ({MAX_DECODE_BYTES} bytes, {MAX_SIDE} pixels per side): {0}")]
    Limits(String),
    #[error("cannot decode the image: {0}")]
    Decode(image::ImageError),
    #[error("cannot normalize the image for this model: {0}")]
    Layout(LayoutError),
}

/// Decodes `bytes` and returns the model's normalized CHW input tensor.
pub fn model_input(bytes: &[u8], model: &Model) -> Result<Vec<f64>, ImageInputError> {
    let spec = model.input();
    let (width, height) = (dim(spec.width), dim(spec.height));
    let rgb = load_rgb8(bytes, width, height)?;
    model
        .normalization()
        .normalize_hwc(rgb.as_raw(), spec.height, spec.width)
        .map_err(ImageInputError::Layout)
}

/// Decodes `bytes` and returns the center crop, resized to `width` x `height`, as RGB8: the
/// decoding is ours, the rest is the client's code (`blindsight_client::image`), which the browser
/// runs on canvas pixels, so both sides make the same tensor from the same picture.
pub fn load_rgb8(bytes: &[u8], width: u32, height: u32) -> Result<RgbImage, ImageInputError> {
    let image = decode(bytes)?;
    let rgb = if image.color().has_alpha() {
        over_white(&image.into_rgba8())
    } else {
        image.into_rgb8()
    };
    Ok(fit_rgb(&rgb, width, height))
}

/// Decodes `bytes` (upright, by its EXIF orientation) to RGBA8: what a browser's canvas gives
/// the page, for clients that then run the browser's code (`Client::encrypt_rgba`).
pub fn decode_rgba(bytes: &[u8]) -> Result<image::RgbaImage, ImageInputError> {
    Ok(decode(bytes)?.into_rgba8())
}

/// Bytes a decoder may allocate for one image, its output buffer included: the largest accepted
/// image ([`MAX_PIXELS`]) at the widest pixel the decoders produce (16-bit RGBA, 8 bytes), and 64 MiB
/// for the decoder's own buffers (rows, chunks, metadata).
pub const MAX_DECODE_BYTES: u64 = MAX_PIXELS * 8 + (64 << 20);

/// The decoders' limits: [`MAX_DECODE_BYTES`], and sides of at most `max_side`.
fn decode_limits(max_side: Option<u32>) -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_image_width = max_side;
    limits.max_image_height = max_side;
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    limits
}

/// A decoder's refusal: over a limit (the decoders name which) or not decodable.
fn limit_error(e: image::ImageError) -> ImageInputError {
    match e {
        image::ImageError::Limits(e) => ImageInputError::Limits(e.to_string()),
        e => ImageInputError::Decode(e),
    }
}

/// Model input sizes are validated to fit memory; one beyond u32 saturates and no image matches it.
fn dim(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The image, upright by its EXIF orientation.
fn decode(bytes: &[u8]) -> Result<DynamicImage, ImageInputError> {
    if bytes.is_empty() {
        return Err(ImageInputError::Empty);
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageInputError::Decode(image::ImageError::IoError(e)))?;
    if !matches!(reader.format(), Some(ImageFormat::Png | ImageFormat::Jpeg)) {
        return Err(ImageInputError::UnsupportedFormat);
    }
    // The dimensions are read from the header with only the allocation cap set (reading a header
    // allocates nothing in proportion to the size it claims), so that an oversized image is named
    // with its size; then the decoder gets every limit and the output buffer is reserved against
    // the cap before a pixel is decoded.
    reader.limits(decode_limits(None));
    let mut decoder = reader.into_decoder().map_err(limit_error)?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(ImageInputError::NoPixels { width, height });
    }
    if width > MAX_SIDE || height > MAX_SIDE || u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(ImageInputError::TooLarge { width, height });
    }
    let mut limits = decode_limits(Some(MAX_SIDE));
    limits
        .reserve(decoder.total_bytes())
        .map_err(|_| ImageInputError::TooLarge { width, height })?;
    decoder.set_limits(limits).map_err(limit_error)?;
    // A damaged EXIF block should not cost the user the image: it is then shown as stored.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(limit_error)?;
    image.apply_orientation(orientation);
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use blindsight_client::image::center_crop;
    use image::Rgb;
    use image::{ImageBuffer, Luma, LumaA, Rgba};

    fn encode(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    fn png(image: impl Into<DynamicImage>) -> Vec<u8> {
        encode(image.into(), ImageFormat::Png)
    }

    /// Every pixel of `img` within `tol` of `rgb`.
    fn assert_solid(img: &RgbImage, rgb: [u8; 3], tol: u8) {
        for p in img.pixels() {
            for c in 0..3 {
                assert!(
                    p.0[c].abs_diff(rgb[c]) <= tol,
                    "pixel {:?}, expected {rgb:?}",
                    p.0
                );
            }
        }
    }

    #[test]
    fn png_and_jpeg_of_any_size_become_the_target_size() {
        for (w, h) in [(1, 1), (45, 17), (17, 45), (32, 32), (300, 200), (7, 1000)] {
            let img = RgbImage::from_pixel(w, h, Rgb([200, 100, 50]));
            let out = load_rgb8(&png(img.clone()), 32, 32).unwrap();
            assert_eq!(out.dimensions(), (32, 32));
            assert_solid(&out, [200, 100, 50], 1);
            let out = load_rgb8(&encode(img.into(), ImageFormat::Jpeg), 32, 32).unwrap();
            assert_eq!(out.dimensions(), (32, 32));
            assert_solid(&out, [200, 100, 50], 4);
        }
    }

    #[test]
    fn center_crop_keeps_the_middle() {
        // 96x32: blue | red | blue in thirds; the centered square is all red.
        let wide = RgbImage::from_fn(96, 32, |x, _| {
            if (32..64).contains(&x) {
                Rgb([255, 0, 0])
            } else {
                Rgb([0, 0, 255])
            }
        });
        assert_solid(&load_rgb8(&png(wide), 32, 32).unwrap(), [255, 0, 0], 0);
        // 20x60: green on top and bottom, red in the middle; downscaled by 5/8 as well.
        let tall = RgbImage::from_fn(20, 60, |_, y| {
            if (20..40).contains(&y) {
                Rgb([255, 0, 0])
            } else {
                Rgb([0, 255, 0])
            }
        });
        let out = load_rgb8(&png(tall), 8, 8).unwrap();
        assert_solid(&out, [255, 0, 0], 0);
        // Non-square targets crop to their own aspect ratio.
        assert_eq!(center_crop((100, 100), (2, 1)), (0, 25, 100, 50));
        assert_eq!(center_crop((100, 10), (1, 1)), (45, 0, 10, 10));
    }

    #[test]
    fn left_and_right_halves_stay_apart() {
        let img = RgbImage::from_fn(256, 256, |x, _| {
            if x < 128 {
                Rgb([0, 0, 0])
            } else {
                Rgb([255, 255, 255])
            }
        });
        let out = load_rgb8(&png(img), 32, 32).unwrap();
        assert!(out.get_pixel(2, 10).0[0] < 5 && out.get_pixel(29, 10).0[0] > 250);
    }

    #[test]
    fn grayscale_and_sixteen_bit_become_rgb() {
        let gray = ImageBuffer::<Luma<u8>, _>::from_pixel(40, 30, Luma([77]));
        assert_solid(&load_rgb8(&png(gray), 32, 32).unwrap(), [77, 77, 77], 0);
        let gray16 = ImageBuffer::<Luma<u16>, _>::from_pixel(40, 30, Luma([40000]));
        assert_solid(
            &load_rgb8(&png(gray16), 32, 32).unwrap(),
            [155, 155, 155],
            1,
        );
        let rgb16 = ImageBuffer::<Rgb<u16>, _>::from_pixel(33, 31, Rgb([65535, 0, 32896]));
        assert_solid(&load_rgb8(&png(rgb16), 32, 32).unwrap(), [255, 0, 128], 1);
    }

    #[test]
    fn transparency_is_composited_over_white() {
        let clear = ImageBuffer::<Rgba<u8>, _>::from_pixel(10, 10, Rgba([0, 0, 0, 0]));
        assert_solid(&load_rgb8(&png(clear), 32, 32).unwrap(), [255, 255, 255], 0);
        let half_red = ImageBuffer::<Rgba<u8>, _>::from_pixel(10, 10, Rgba([255, 0, 0, 128]));
        assert_solid(
            &load_rgb8(&png(half_red), 32, 32).unwrap(),
            [255, 127, 127],
            1,
        );
        let gray_alpha = ImageBuffer::<LumaA<u8>, _>::from_pixel(10, 10, LumaA([0, 255]));
        assert_solid(&load_rgb8(&png(gray_alpha), 32, 32).unwrap(), [0, 0, 0], 0);
        let rgba16 = ImageBuffer::<Rgba<u16>, _>::from_pixel(10, 10, Rgba([0, 0, 65535, 65535]));
        assert_solid(&load_rgb8(&png(rgba16), 32, 32).unwrap(), [0, 0, 255], 0);
    }

    #[test]
    fn palette_png_is_expanded() {
        let mut bytes = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut bytes, 9, 5);
            enc.set_color(png::ColorType::Indexed);
            enc.set_depth(png::BitDepth::Eight);
            enc.set_palette(vec![10, 20, 30, 200, 150, 100]);
            let mut writer = enc.write_header().unwrap();
            writer.write_image_data(&[1; 9 * 5]).unwrap();
        }
        assert_solid(&load_rgb8(&bytes, 32, 32).unwrap(), [200, 150, 100], 0);
    }

    #[test]
    fn bad_files_give_clear_errors() {
        assert!(matches!(
            load_rgb8(&[], 32, 32),
            Err(ImageInputError::Empty)
        ));
        assert!(matches!(
            load_rgb8(b"hello, not an image", 32, 32),
            Err(ImageInputError::UnsupportedFormat)
        ));
        assert!(matches!(
            load_rgb8(b"GIF89a\x01\x00\x01\x00", 32, 32),
            Err(ImageInputError::UnsupportedFormat)
        ));
        let good = png(RgbImage::from_pixel(50, 50, Rgb([1, 2, 3])));
        let truncated = &good[..good.len() / 2];
        assert!(matches!(
            load_rgb8(truncated, 32, 32),
            Err(ImageInputError::Decode(_))
        ));
        let jpeg = encode(
            RgbImage::from_pixel(50, 50, Rgb([1, 2, 3])).into(),
            ImageFormat::Jpeg,
        );
        assert!(load_rgb8(&jpeg[..20], 32, 32).is_err());
    }

    #[test]
    fn oversized_images_are_refused_before_decoding() {
        let long = png(ImageBuffer::<Luma<u8>, _>::new(MAX_SIDE + 1, 1));
        assert!(
            matches!(load_rgb8(&long, 32, 32), Err(ImageInputError::TooLarge { width, height: 1 }) if width == MAX_SIDE + 1)
        );
        // A 100-byte file claiming 8000x8000 (64 Mi pixels): refused from its header alone.
        let mut bytes = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut bytes, 8000, 8000);
            enc.set_color(png::ColorType::Rgba);
            let mut writer = enc.write_header().unwrap();
            writer.write_chunk(png::chunk::IDAT, &[0x78, 0x9c]).unwrap();
        }
        assert!(bytes.len() < 100);
        assert!(matches!(
            load_rgb8(&bytes, 32, 32),
            Err(ImageInputError::TooLarge {
                width: 8000,
                height: 8000
            })
        ));
    }

    /// A JPEG whose frame header (SOF0) claims `width x height`: the pixels are those of a 16x16 image.
    fn jpeg_claiming(width: u16, height: u16) -> Vec<u8> {
        let mut bytes = encode(
            RgbImage::from_pixel(16, 16, Rgb([9, 9, 9])).into(),
            ImageFormat::Jpeg,
        );
        let sof = bytes
            .windows(2)
            .position(|w| w == [0xff, 0xc0])
            .expect("a baseline frame header");
        bytes[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
        bytes[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
        bytes
    }

    #[test]
    fn headers_claiming_huge_sizes_are_refused_by_the_limits() {
        // PNG headers of the largest sides the format allows, made at run time: nothing decoded
        for (w, h) in [(65_535, 65_535), ((1 << 31) - 1, 1), (1, (1 << 31) - 1)] {
            let mut bytes = Vec::new();
            {
                let mut enc = png::Encoder::new(&mut bytes, w, h);
                enc.set_color(png::ColorType::Rgba);
                enc.set_depth(png::BitDepth::Sixteen);
                let mut writer = enc.write_header().unwrap();
                writer.write_chunk(png::chunk::IDAT, &[0x78, 0x9c]).unwrap();
            }
            // a row of 2^31 16-bit RGBA pixels is over the allocation cap before the size is known
            match decode_rgba(&bytes) {
                Err(ImageInputError::TooLarge { width, height }) => {
                    assert_eq!((width, height), (w, h))
                }
                Err(ImageInputError::Limits(_)) if w.max(h) > 65_535 => {}
                other => panic!("{w}x{h}: {other:?}"),
            }
        }
        // a JPEG whose frame claims 60000x60000 (3.6 G pixels)
        let jpeg = jpeg_claiming(60_000, 60_000);
        assert!(matches!(
            decode_rgba(&jpeg),
            Err(ImageInputError::TooLarge {
                width: 60_000,
                height: 60_000
            })
        ));
        // within the limits the same trick decodes (the JPEG decoder fills missing data), at the
        // cost of the claimed size: what the limits allow
        let jpeg = jpeg_claiming(2000, 1000);
        match decode_rgba(&jpeg) {
            Ok(img) => assert_eq!(img.dimensions(), (2000, 1000)),
            Err(e) => assert!(matches!(e, ImageInputError::Decode(_)), "{e}"),
        }
    }

    #[test]
    fn model_input_is_normalized_chw() {
        let model = Model::embedded().unwrap();
        let img = RgbImage::from_pixel(64, 48, Rgb([255, 0, 128]));
        let x = model_input(&png(img), &model).unwrap();
        let spec = model.input();
        assert_eq!(spec.channels, 3);
        assert_eq!(x.len(), model.input_shape().size());
        let plane = spec.height * spec.width;
        let (mean, std) = (&spec.mean, &spec.std);
        for (c, v) in [255.0, 0.0, 128.0].into_iter().enumerate() {
            let want = (v / 255.0 - mean[c]) / std[c];
            assert!(x[c * plane..(c + 1) * plane]
                .iter()
                .all(|&t| (t - want).abs() < 1e-12));
        }
    }
}
