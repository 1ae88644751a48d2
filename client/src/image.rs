//! RGBA pixels of any size to the model's input size, the same way on every client: composite
//! transparency over white (as the image shows on a page), center-crop to the input's aspect ratio,
//! resize with Lanczos3 (its support widens with the scale factor, so a large downscale averages
//! every source pixel instead of aliasing). The browser hands over canvas pixels; the native
//! loader decodes files first and then calls the same function.

use image::imageops::{self, FilterType};
use image::{Rgb, RgbImage, RgbaImage};

use crate::error::ClientError;

/// Largest accepted width or height.
pub const MAX_SIDE: u32 = 8192;
/// Largest accepted pixel count: 16 Mi pixels, 64 MiB as RGBA8 (a 16-megapixel photo fits).
pub const MAX_PIXELS: u64 = 16 << 20;

/// Checks a claimed image size against [`MAX_SIDE`] and [`MAX_PIXELS`] before anything is
/// allocated for it.
pub fn check_size(width: u32, height: u32) -> Result<(), ClientError> {
    if width == 0 || height == 0 {
        return Err(ClientError::Image(format!(
            "the image has no pixels ({width}x{height})"
        )));
    }
    if width > MAX_SIDE || height > MAX_SIDE || u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(ClientError::Image(format!(
            "the image is {width}x{height}; at most {MAX_SIDE} pixels per side and {MAX_PIXELS} pixels in all are accepted"
        )));
    }
    Ok(())
}

/// `rgba` (`width * height * 4` bytes, row-major) composited over white, center-cropped and
/// resized to `target_width x target_height`, as RGB8.
pub fn fit_rgba(
    rgba: &[u8],
    width: u32,
    height: u32,
    target_width: u32,
    target_height: u32,
) -> Result<RgbImage, ClientError> {
    check_size(width, height)?;
    check_size(target_width, target_height)?;
    let expected = u64::from(width) * u64::from(height) * 4;
    if rgba.len() as u64 != expected {
        return Err(ClientError::Image(format!(
            "{width}x{height} RGBA pixels are {expected} bytes, got {}",
            rgba.len()
        )));
    }
    let rgba = RgbaImage::from_raw(width, height, rgba.to_vec())
        .ok_or_else(|| ClientError::Image("pixel buffer does not match its size".into()))?;
    let rgb = over_white(&rgba);
    Ok(fit_rgb(&rgb, target_width, target_height))
}

/// [`fit_rgba`] for an image without transparency.
pub fn fit_rgb(rgb: &RgbImage, target_width: u32, target_height: u32) -> RgbImage {
    let (x, y, w, h) = center_crop(rgb.dimensions(), (target_width, target_height));
    let crop = imageops::crop_imm(rgb, x, y, w, h);
    imageops::resize(&*crop, target_width, target_height, FilterType::Lanczos3)
}

/// An RGBA image with any transparency composited over white.
pub fn over_white(rgba: &RgbaImage) -> RgbImage {
    RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let a = u32::from(a);
        let blend = |c: u8| ((u32::from(c) * a + 255 * (255 - a) + 127) / 255) as u8;
        Rgb([blend(r), blend(g), blend(b)])
    })
}

/// The largest centered region of `(w, h)` with the target's aspect ratio: `(x, y, width, height)`.
pub fn center_crop((w, h): (u32, u32), (tw, th): (u32, u32)) -> (u32, u32, u32, u32) {
    let (w64, h64) = (u64::from(w), u64::from(h));
    let (tw64, th64) = (u64::from(tw.max(1)), u64::from(th.max(1)));
    let (cw, ch) = if w64 * th64 > h64 * tw64 {
        (((h64 * tw64 + th64 / 2) / th64).max(1) as u32, h)
    } else {
        (w, ((w64 * th64 + tw64 / 2) / tw64).max(1) as u32)
    };
    ((w - cw) / 2, (h - ch) / 2, cw, ch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rgba_is_composited_cropped_and_resized() {
        // 8x4: left half opaque red, right half transparent (white once composited)
        let (w, h) = (8u32, 4u32);
        let mut px = Vec::new();
        for _y in 0..h {
            for x in 0..w {
                px.extend_from_slice(if x < 4 {
                    &[255, 0, 0, 255]
                } else {
                    &[0, 0, 0, 0]
                });
            }
        }
        let out = fit_rgba(&px, w, h, 2, 2).unwrap();
        assert_eq!(out.dimensions(), (2, 2));
        // the center crop is columns 2..6: red on the left, white on the right
        assert!(out.get_pixel(0, 0).0[0] > 200 && out.get_pixel(0, 0).0[1] < 60);
        assert!(out.get_pixel(1, 0).0.iter().all(|&c| c > 200));
    }

    #[test]
    fn bad_sizes_are_errors() {
        assert!(fit_rgba(&[0; 12], 2, 2, 2, 2).is_err(), "short buffer");
        assert!(fit_rgba(&[], 0, 0, 2, 2).is_err(), "no pixels");
        assert!(check_size(MAX_SIDE + 1, 1).is_err());
        assert!(check_size(8192, 8192).is_err(), "too many pixels");
        assert!(check_size(4096, 4096).is_ok());
    }
}
