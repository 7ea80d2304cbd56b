// The options form: what is chosen, as upload form fields, and which choices apply together.

import { $ } from './page.js';

/** The quality of the page's "WebP, lossy" choice. */
const LOSSY_WEBP_QUALITY = 80;

/** The processing options chosen on the page, as form fields. */
export function chosenOptions() {
  // 'webp-lossy' is WebP at a quality: lossy colour, exact alpha, the smallest files.
  const choice = $('opt-format').value;
  const quality = choice === 'webp-lossy' ? LOSSY_WEBP_QUALITY : null;
  const format = quality ? 'webp' : choice;
  const solid = $('opt-solid').checked || format === 'jpeg';
  const remove = $('opt-task').value === 'remove';
  const mask = $('opt-mask').checked;
  const bg = solid && !mask ? $('opt-color').value : null;
  const width = parseInt($('opt-width').value, 10);
  const filter = $('opt-filter').value;
  const text = $('opt-watermark').value.trim();
  if (remove && !width && !filter && !text) {
    return { model: $('opt-model').value, format, quality, mask_only: mask, crop: $('opt-crop').checked, bg_color: bg };
  }
  // Anything more is a pipeline of operations (the `op` form fields).
  const op = [];
  if (remove) {
    // Without a model list (the config could not be read) the server's default model runs.
    const model = $('opt-model').value;
    let rb = model ? `remove_background:model=${model}` : 'remove_background';
    if (mask) rb += ',mask_only=true';
    if (bg) rb += `,bg_color=${bg}`;
    op.push(rb);
    if ($('opt-crop').checked) op.push('crop_to_subject');
  }
  if (filter) op.push(`filter:${filter}`);
  if (width > 0) op.push(`resize:width=${width}`);
  if (text) op.push(`watermark:text=${text},position=bottom_right,opacity=0.6`);
  op.push(`encode:format=${format}` + (quality ? `,quality=${quality}` : ''));
  return { op };
}

/** Options that cannot apply together are disabled, and say so. */
export function syncOptions() {
  const jpeg = $('opt-format').value === 'jpeg';
  const edit = $('opt-task').value === 'edit';
  for (const id of ['opt-model', 'opt-crop', 'opt-mask']) $(id).disabled = edit;
  const mask = $('opt-mask').checked && !edit;
  if (jpeg && $('opt-transparent').checked) $('opt-solid').checked = true;
  $('opt-transparent').disabled = jpeg;
  $('opt-bg').disabled = mask || edit;
  $('opt-color').disabled = mask || !$('opt-solid').checked;
}

/** The models this deployment knows, from `/v1/config`; those no worker loads are offered disabled. */
export function showModels(models) {
  const sel = $('opt-model');
  const chosen = sel.value;
  sel.replaceChildren();
  for (const m of models) {
    const opt = document.createElement('option');
    opt.value = m.id;
    opt.textContent = m.available ? m.label : `${m.label} — not installed here`;
    opt.disabled = !m.available;
    sel.append(opt);
  }
  const keep = Array.from(sel.options).find((o) => o.value === chosen && !o.disabled);
  const first = Array.from(sel.options).find((o) => !o.disabled);
  if (keep || first) sel.value = (keep || first).value;
}
