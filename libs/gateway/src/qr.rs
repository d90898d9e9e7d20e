//! QR codes as SVG (for pages and print) and PNG (for anything that wants a picture): the
//! `qrcode` crate's encoder and SVG renderer, and a small PNG encoder (`png`) over its modules,
//! without an image library.
//!
//! Error correction level M (15 % of the code may be damaged or dirty) and the standard quiet
//! zone of 4 modules around it.

use qrcode::render::svg;
use qrcode::{Color, EcLevel, QrCode};

use crate::problem::ApiError;

/// The light margin around a code, in modules (ISO/IEC 18004).
const QUIET_ZONE: usize = 4;
/// Pixels per module of a PNG: about 600 px for a URL, sharp when printed at A6.
pub const PNG_MODULE_PX: usize = 12;

fn encode(text: &str) -> Result<QrCode, ApiError> {
    QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M)
        .map_err(|e| ApiError::Internal(format!("QR code of {} bytes: {e}", text.len())))
}

/// The code of `text` as a standalone SVG document (with its XML declaration): one module per
/// user unit, the quiet zone included, `size` px wide and high.
pub fn svg_document(text: &str, size: u32) -> Result<String, ApiError> {
    let code = encode(text)?;
    Ok(code
        .render::<svg::Color>()
        .quiet_zone(true)
        .module_dimensions(1, 1)
        .build()
        .replacen(
            &format!(
                r#"width="{w}" height="{w}""#,
                w = code.width() + 2 * QUIET_ZONE
            ),
            &format!(r#"width="{size}" height="{size}""#),
            1,
        ))
}

/// The code of `text` as an `<svg>` element to put inside an HTML page, with `class` and an
/// accessible `label`; it scales with its CSS box.
pub fn inline_svg(text: &str, class: &str, label: &str) -> Result<String, ApiError> {
    let doc = svg_document(text, 256)?;
    let start = doc
        .find("<svg")
        .ok_or_else(|| ApiError::Internal("the QR renderer made no <svg>".into()))?;
    Ok(doc[start..].replacen(
        "<svg ",
        &format!(
            r#"<svg class="{class}" role="img" aria-label="{}" "#,
            crate::pages::escape(label)
        ),
        1,
    ))
}

/// The code of `text` as a greyscale PNG, [`PNG_MODULE_PX`] pixels per module, the quiet zone
/// included.
pub fn png(text: &str) -> Result<Vec<u8>, ApiError> {
    let code = encode(text)?;
    let modules = code.width();
    let colors = code.to_colors();
    let side = (modules + 2 * QUIET_ZONE) * PNG_MODULE_PX;
    let mut pixels = vec![255u8; side * side];
    for (i, c) in colors.iter().enumerate() {
        if *c != Color::Dark {
            continue;
        }
        let (mx, my) = (i % modules + QUIET_ZONE, i / modules + QUIET_ZONE);
        for y in my * PNG_MODULE_PX..(my + 1) * PNG_MODULE_PX {
            let row = y * side;
            pixels[row + mx * PNG_MODULE_PX..row + (mx + 1) * PNG_MODULE_PX].fill(0);
        }
    }
    let mut out = Vec::with_capacity(side * side / 16);
    let failed = |e: png::EncodingError| ApiError::Internal(format!("PNG encoding: {e}"));
    {
        let mut enc = png::Encoder::new(&mut out, side as u32, side as u32);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(failed)?;
        w.write_image_data(&pixels).map_err(failed)?;
        w.finish().map_err(failed)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_is_one_document_of_the_asked_size() {
        let s = svg_document("https://example.com/join/s_1/abc", 300).unwrap();
        assert!(s.starts_with("<?xml"));
        assert!(s.contains(r#"width="300" height="300""#), "{s}");
        assert!(s.contains("viewBox=\"0 0 "), "{s}");
        assert!(s.ends_with("</svg>"));
        let inline = inline_svg("x", "qr", "a \"code\"").unwrap();
        assert!(inline.starts_with(r#"<svg class="qr" role="img" aria-label="a &quot;code&quot;""#));
    }

    #[test]
    fn png_has_its_signature_and_size() {
        let p = png("hello").unwrap();
        assert_eq!(&p[..8], b"\x89PNG\r\n\x1a\n");
        // Version 1: 21 modules and the quiet zone.
        let side = ((21 + 8) * PNG_MODULE_PX) as u32;
        assert_eq!(&p[16..20], &side.to_be_bytes());
        assert_eq!(&p[20..24], &side.to_be_bytes());
    }
}
