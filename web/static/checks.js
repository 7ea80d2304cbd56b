// Client-side checks of a file before it is uploaded, with the limits the server enforces
// (GET /v1/config). They mirror web's own checks: the type is sniffed from the first bytes (never
// taken from the name), the dimensions are read from the header without decoding the image.
// The server checks everything again; these only save a pointless upload.

/** Defaults, used until (or if) /v1/config answers. */
export const DEFAULT_LIMITS = {
  max_upload_bytes: 25 * 1024 * 1024,
  max_pixels: 40000000,
  max_side: 20000,
};

const TYPE_NAMES = 'PNG, JPEG, WebP, GIF, BMP or TIFF';

/** "25 MB", "1.5 MB", "900 KB". */
export function formatBytes(n) {
  if (n >= 1024 * 1024) {
    const mb = n / (1024 * 1024);
    return (Number.isInteger(mb) ? mb : mb.toFixed(1)) + ' MB';
  }
  if (n >= 1024) return Math.round(n / 1024) + ' KB';
  return n + ' bytes';
}

/** "40 megapixels", "1.2 megapixels". */
export function formatMegapixels(pixels) {
  const mp = pixels / 1e6;
  return (Number.isInteger(mp) ? mp : mp.toFixed(1)) + ' megapixels';
}

/** The image type from magic numbers, or null. */
export function sniff(b) {
  const at = (i, ...bytes) => bytes.every((v, k) => b[i + k] === v);
  const ascii = (i, s) => at(i, ...Array.from(s, (c) => c.charCodeAt(0)));
  if (at(0, 0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a)) return 'png';
  if (at(0, 0xff, 0xd8, 0xff)) return 'jpeg';
  if (b.length >= 12 && ascii(0, 'RIFF') && ascii(8, 'WEBP')) return 'webp';
  if (ascii(0, 'GIF87a') || ascii(0, 'GIF89a')) return 'gif';
  if (ascii(0, 'BM') && b.length >= 26) return 'bmp';
  if (at(0, 0x49, 0x49, 0x2a, 0x00) || at(0, 0x4d, 0x4d, 0x00, 0x2a)) return 'tiff';
  return null;
}

/** [width, height] from the header, or null when it cannot be read here (the server decides). */
export function dimensions(type, b) {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  try {
    switch (type) {
      case 'png': return [v.getUint32(16), v.getUint32(20)];
      case 'gif': return [v.getUint16(6, true), v.getUint16(8, true)];
      case 'bmp': return [Math.abs(v.getInt32(18, true)), Math.abs(v.getInt32(22, true))];
      case 'webp': return webpDimensions(b, v);
      case 'jpeg': return jpegDimensions(b, v);
      default: return null;
    }
  } catch (_) {
    return null; // header shorter than it claims: let the server say so
  }
}

function webpDimensions(b, v) {
  const chunk = String.fromCharCode(b[12], b[13], b[14], b[15]);
  if (chunk === 'VP8X') return [1 + (b[24] | (b[25] << 8) | (b[26] << 16)), 1 + (b[27] | (b[28] << 8) | (b[29] << 16))];
  if (chunk === 'VP8L') {
    const bits = v.getUint32(21, true);
    return [1 + (bits & 0x3fff), 1 + ((bits >>> 14) & 0x3fff)];
  }
  if (chunk === 'VP8 ') return [v.getUint16(26, true) & 0x3fff, v.getUint16(28, true) & 0x3fff];
  return null;
}

function jpegDimensions(b, v) {
  let i = 2;
  while (i + 9 < b.length) {
    if (b[i] !== 0xff) return null;
    const marker = b[i + 1];
    if (marker === 0xff) { i += 1; continue; } // fill byte
    const len = v.getUint16(i + 2);
    // SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC) carry the frame size.
    if (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) {
      return [v.getUint16(i + 7), v.getUint16(i + 5)];
    }
    i += 2 + len;
  }
  return null;
}

/**
 * Check one file. Resolves to null when it may be uploaded, else to a message a person can act on.
 * @param {File} file
 * @param {typeof DEFAULT_LIMITS} limits
 */
export async function checkFile(file, limits) {
  const name = file.name || 'The pasted image';
  if (file.size === 0) return `${name} is empty.`;
  if (file.size > limits.max_upload_bytes) {
    return `${name} is ${formatBytes(file.size)}; the limit is ${formatBytes(limits.max_upload_bytes)}. ` +
      'Try a smaller export of the photo.';
  }
  // 256 KiB covers a JPEG's EXIF block ahead of its frame header.
  const head = new Uint8Array(await file.slice(0, 256 * 1024).arrayBuffer());
  const type = sniff(head);
  if (!type) return `${name} is not an image BackLess can read. Use ${TYPE_NAMES}.`;
  const dims = dimensions(type, head);
  if (dims) {
    const [w, h] = dims;
    if (w === 0 || h === 0) return `${name} has no pixels.`;
    if (w > limits.max_side || h > limits.max_side) {
      return `${name} is ${w}×${h}; each side may be at most ${limits.max_side} pixels. Resize it and try again.`;
    }
    if (w * h > limits.max_pixels) {
      return `${name} is ${w}×${h} (${formatMegapixels(w * h)}), larger than ${formatMegapixels(limits.max_pixels)}. ` +
        'Resize it and try again.';
    }
  }
  return null;
}
