//! How many frames an animated image declares, read from the container structure alone (no pixel
//! is decoded): GIF image descriptors, the APNG `acTL` frame count, WebP `ANMF` chunks. Any other
//! format, or a still image, counts as one frame. A truncated or malformed file counts what was
//! read before the damage; the decoder reports the damage itself.

/// The frame count `data` declares (at least 1).
pub fn count_frames(data: &[u8]) -> u32 {
    let n = if data.starts_with(b"GIF87a") || data.starts_with(b"GIF89a") {
        gif_frames(data)
    } else if data.starts_with(b"\x89PNG\r\n\x1a\n") {
        png_frames(data)
    } else if data.len() >= 12 && &data[0..4] == b"RIFF" && &data[8..12] == b"WEBP" {
        webp_frames(data)
    } else {
        1
    };
    n.max(1)
}

/// Skip GIF data sub-blocks (length-prefixed, ended by a zero length) from `pos`.
fn skip_sub_blocks(data: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let len = usize::from(*data.get(pos)?);
        pos += 1;
        if len == 0 {
            return Some(pos);
        }
        pos += len;
    }
}

fn gif_frames(data: &[u8]) -> u32 {
    // Header (6) + logical screen descriptor (7); bit 7 of byte 10 announces a global table.
    let Some(&packed) = data.get(10) else {
        return 0;
    };
    let mut pos = 13;
    if packed & 0x80 != 0 {
        pos += 3 << ((packed & 0x07) + 1);
    }
    let mut frames = 0u32;
    while let Some(&introducer) = data.get(pos) {
        match introducer {
            0x2C => {
                frames = frames.saturating_add(1);
                // Descriptor (10 bytes with the introducer), optional local table, LZW code size.
                let Some(&packed) = data.get(pos + 9) else {
                    break;
                };
                pos += 10;
                if packed & 0x80 != 0 {
                    pos += 3 << ((packed & 0x07) + 1);
                }
                pos += 1;
                match skip_sub_blocks(data, pos) {
                    Some(p) => pos = p,
                    None => break,
                }
            }
            0x21 => match skip_sub_blocks(data, pos + 2) {
                Some(p) => pos = p,
                None => break,
            },
            _ => break, // 0x3B trailer, or garbage
        }
    }
    frames
}

fn png_frames(data: &[u8]) -> u32 {
    let mut pos = 8;
    while pos + 8 <= data.len() {
        let len = u32::from_be_bytes([data[pos], data[pos + 1], data[pos + 2], data[pos + 3]]);
        let kind = &data[pos + 4..pos + 8];
        let body = pos + 8;
        if kind == b"acTL" {
            return match data.get(body..body + 4) {
                Some(n) => u32::from_be_bytes([n[0], n[1], n[2], n[3]]),
                None => 1,
            };
        }
        if kind == b"IDAT" || kind == b"IEND" {
            break; // acTL must come before the image data
        }
        pos = body.saturating_add(len as usize).saturating_add(4);
    }
    1
}

fn webp_frames(data: &[u8]) -> u32 {
    let mut pos = 12;
    let mut frames = 0u32;
    while pos + 8 <= data.len() {
        let kind = &data[pos..pos + 4];
        let len = u32::from_le_bytes([data[pos + 4], data[pos + 5], data[pos + 6], data[pos + 7]]);
        if kind == b"ANMF" {
            frames = frames.saturating_add(1);
        }
        let padded = (len as usize).saturating_add(len as usize & 1);
        pos = pos.saturating_add(8).saturating_add(padded);
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GIF with `n` 1x1 frames, written by hand (global table of 2 colours).
    fn gif(n: usize) -> Vec<u8> {
        let mut g = b"GIF89a\x01\x00\x01\x00\x80\x00\x00".to_vec();
        g.extend_from_slice(&[0, 0, 0, 255, 255, 255]);
        // Netscape looping extension: skipped as an extension.
        g.extend_from_slice(b"\x21\xFF\x0BNETSCAPE2.0\x03\x01\x00\x00\x00");
        for _ in 0..n {
            g.extend_from_slice(b"\x21\xF9\x04\x00\x0A\x00\x00\x00"); // graphic control
            g.extend_from_slice(b"\x2C\x00\x00\x00\x00\x01\x00\x01\x00\x00");
            g.extend_from_slice(b"\x02\x02\x44\x01\x00"); // LZW code size 2, one sub-block
        }
        g.push(0x3B);
        g
    }

    fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], body: &[u8]) {
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(kind);
        out.extend_from_slice(body);
        out.extend_from_slice(&[0; 4]); // CRC is not checked here
    }

    #[test]
    fn counts_gif_frames() {
        assert_eq!(count_frames(&gif(1)), 1);
        assert_eq!(count_frames(&gif(7)), 7);
        let g = gif(7);
        assert!(count_frames(&g[..g.len() / 2]) < 7);
        // The image crate reads our hand-written file, so the structure is right.
        let frames = image::codecs::gif::GifDecoder::new(std::io::Cursor::new(gif(3))).unwrap();
        assert_eq!(
            image::AnimationDecoder::into_frames(frames)
                .collect_frames()
                .unwrap()
                .len(),
            3
        );
    }

    #[test]
    fn counts_apng_and_webp_frames() {
        let mut p = b"\x89PNG\r\n\x1a\n".to_vec();
        png_chunk(&mut p, b"IHDR", &[0; 13]);
        png_chunk(&mut p, b"acTL", &[0, 0, 0x27, 0x10, 0, 0, 0, 0]);
        png_chunk(&mut p, b"IDAT", &[]);
        assert_eq!(count_frames(&p), 10_000);

        let mut w = b"RIFF\0\0\0\0WEBPVP8X".to_vec();
        w.extend_from_slice(&[10, 0, 0, 0]);
        w.extend_from_slice(&[0; 10]);
        for _ in 0..4 {
            w.extend_from_slice(b"ANMF\x03\0\0\0abc\0"); // odd length: padded
        }
        assert_eq!(count_frames(&w), 4);
    }

    #[test]
    fn stills_and_garbage_are_one_frame() {
        assert_eq!(count_frames(b""), 1);
        assert_eq!(count_frames(b"\xFF\xD8\xFF\xE0"), 1);
        assert_eq!(count_frames(b"GIF89a"), 1);
        assert_eq!(count_frames(b"\x89PNG\r\n\x1a\n\xFF\xFF\xFF\xFFIHDR"), 1);
    }
}
