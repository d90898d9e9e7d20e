//! The pass's images, drawn in code (no binary asset in the repository): a round badge in the
//! pass's colours. Wallet needs `icon.png` (lock screen, notifications) and shows `logo.png`
//! at the top left of the pass; `@2x` variants serve Retina screens.

use crate::WalletError;

/// The pass's background colour (RGB), also written into `pass.json`.
pub(crate) const BACKGROUND: [u8; 3] = [31, 64, 104];
/// The badge's colour.
pub(crate) const ACCENT: [u8; 3] = [242, 183, 5];
/// The text colour on the background.
pub(crate) const FOREGROUND: [u8; 3] = [255, 255, 255];

/// The images of a pass, by file name, each an RGBA PNG.
pub(crate) fn pass_images() -> Result<Vec<(&'static str, Vec<u8>)>, WalletError> {
    Ok(vec![
        ("icon.png", icon(29)?),
        ("icon@2x.png", icon(58)?),
        ("logo.png", logo(1)?),
        ("logo@2x.png", logo(2)?),
    ])
}

/// A square icon of `side` pixels: the badge on the background.
fn icon(side: u32) -> Result<Vec<u8>, WalletError> {
    let r = side as f32 * 0.36;
    draw(side, side, |x, y| {
        let c = side as f32 / 2.0;
        if inside(x, y, c, c, r) {
            rgba(ACCENT)
        } else {
            rgba(BACKGROUND)
        }
    })
}

/// The logo (160 × 50 points at `scale`): the badge on a transparent strip, left-aligned, for
/// the franchise's name (`logoText`) to follow.
fn logo(scale: u32) -> Result<Vec<u8>, WalletError> {
    let (w, h) = (160 * scale, 50 * scale);
    let r = h as f32 * 0.36;
    draw(w, h, |x, y| {
        let c = h as f32 / 2.0;
        if inside(x, y, c, c, r) {
            rgba(ACCENT)
        } else {
            [0, 0, 0, 0]
        }
    })
}

fn rgba([r, g, b]: [u8; 3]) -> [u8; 4] {
    [r, g, b, 255]
}

/// Whether the centre of pixel (`x`, `y`) lies in the circle of centre (`cx`, `cy`), radius `r`.
fn inside(x: u32, y: u32, cx: f32, cy: f32, r: f32) -> bool {
    let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
    dx * dx + dy * dy <= r * r
}

/// A `w` × `h` RGBA PNG whose pixels `pixel` gives.
fn draw(w: u32, h: u32, pixel: impl Fn(u32, u32) -> [u8; 4]) -> Result<Vec<u8>, WalletError> {
    let mut data = Vec::with_capacity((w * h * 4) as usize);
    for y in 0..h {
        for x in 0..w {
            data.extend_from_slice(&pixel(x, y));
        }
    }
    let failed = |e: png::EncodingError| WalletError::Build(format!("PNG encoding: {e}"));
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgba);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(failed)?;
        writer.write_image_data(&data).map_err(failed)?;
        writer.finish().map_err(failed)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_pngs_of_the_documented_sizes() {
        let images = pass_images().unwrap();
        let names: Vec<_> = images.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            ["icon.png", "icon@2x.png", "logo.png", "logo@2x.png"]
        );
        for ((_, png), (w, h)) in images
            .iter()
            .zip([(29, 29), (58, 58), (160, 50), (320, 100)])
        {
            assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
            // IHDR: width and height, big-endian, right after the signature and chunk header.
            assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), w);
            assert_eq!(u32::from_be_bytes(png[20..24].try_into().unwrap()), h);
        }
    }
}
