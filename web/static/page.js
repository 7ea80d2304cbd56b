// What every part of the page shares: element lookup, the page's state, messages, views,
// the title and notifications.

export const $ = (id) => document.getElementById(id);

export const state = {
  limits: null,
  graceSeconds: 30,
  /** Photos sent at once (`/v1/config`'s `batch_size`). */
  batchSize: 4,
  /** The photos on the page (`Job`s). */
  jobs: [],
};

/** "the image is damaged" -> "The image is damaged." */
export function sentence(msg) {
  const s = String(msg || '').trim();
  if (!s) return '';
  const t = s[0].toUpperCase() + s.slice(1);
  return /[.!?]$/.test(t) ? t : t + '.';
}

export function showView(name) {
  $('upload-view').hidden = name !== 'upload';
  $('jobs-view').hidden = name !== 'jobs';
  document.body.dataset.view = name;
}

export function setMessage(el, lines) {
  el.replaceChildren();
  const list = [].concat(lines).filter(Boolean);
  for (const line of list) {
    const p = document.createElement('p');
    p.textContent = line;
    el.append(p);
  }
  el.hidden = list.length === 0;
}

export function updateTitle() {
  const live = state.jobs.filter((j) => j.view === 'waiting').length;
  document.title = (live ? `(${live} working) ` : '') + 'BackLess — remove the background from a photo';
  offerNotifications();
}

export function notify(title, body, tag) {
  if (!('Notification' in window) || Notification.permission !== 'granted') return;
  if (document.visibilityState !== 'hidden') return;
  try {
    const n = new Notification(title, { body, tag, icon: '/static/favicon.svg' });
    n.onclick = () => { window.focus(); n.close(); };
  } catch (_) { /* some platforms only allow notifications from a service worker */ }
}

/** Offer notifications while something is still working and the browser has not been asked. */
export function offerNotifications() {
  const can = 'Notification' in window && Notification.permission === 'default';
  $('notify-offer').hidden = !can || !state.jobs.some((j) => j.view === 'waiting');
}

/** Back to the upload view; the photos shown are let go (the server deletes them after the grace window). */
export function startOver() {
  for (const j of state.jobs) j.dispose();
  state.jobs = [];
  $('jobs').replaceChildren();
  $('file').value = '';
  setMessage($('jobs-notice'), []);
  setMessage($('upload-error'), []);
  updateTitle();
  showView('upload');
  $('file').focus();
}
