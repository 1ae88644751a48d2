// CIFAR-10 test images as PNG files, made at test time: the binary batch (1 label byte, then
// 1024 R, 1024 G, 1024 B bytes of a 32x32 image per record) and a minimal PNG encoder on zlib.

import { readFileSync } from 'node:fs';
import { deflateSync } from 'node:zlib';

const SIDE = 32;
const RECORD = 1 + 3 * SIDE * SIDE;
export const CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck'];

/** Record `index` of a CIFAR-10 binary batch: { label, rgb } (rgb interleaved, row-major). */
export function cifarImage(batchPath, index) {
  const data = readFileSync(batchPath);
  const start = index * RECORD;
  if (start + RECORD > data.length) throw new Error(`${batchPath} has no record ${index}`);
  const plane = SIDE * SIDE;
  const rgb = Buffer.alloc(3 * plane);
  for (let i = 0; i < plane; i++) {
    for (let c = 0; c < 3; c++) rgb[3 * i + c] = data[start + 1 + c * plane + i];
  }
  return { label: CLASSES[data[start]], rgb, width: SIDE, height: SIDE };
}

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(buf) {
  let c = 0xffffffff;
  for (const b of buf) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type, body) {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(body.length, 0);
  head.write(type, 4, 'latin1');
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), body])), 0);
  return Buffer.concat([head, body, crc]);
}

/** An 8-bit RGB PNG (no color-space chunks: the pixels are taken as they are). */
export function encodePng({ rgb, width, height }) {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // truecolor
  const stride = 3 * width;
  const raw = Buffer.alloc((stride + 1) * height);
  for (let y = 0; y < height; y++) rgb.copy(raw, y * (stride + 1) + 1, y * stride, (y + 1) * stride);
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(raw)),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}
