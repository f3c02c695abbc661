// The leaderboard page's behaviour (inlined by bench/results/leaderboard/html.py): sort by a column, expand a
// seed group into its runs, filter the rows. A <tbody> is one row with its runs, so sorting moves it whole.
(function () {
  'use strict';
  const MISSING = new Set(['', '\u2014']);  // empty, or the em dash of a value not measured

  // the cell's text without the expand button
  function cellText(cell) {
    return Array.from(cell.childNodes).filter(n => n.nodeName !== 'BUTTON')
      .map(n => n.textContent).join('').trim();
  }

  // the sort key of a cell: its leading number ('61.33 [55.7, 66.6]', '12', '0.612'), else its text
  function key(tbody, col) {
    const text = cellText(tbody.rows[0].cells[col]);
    if (MISSING.has(text)) return null;
    const num = /^-?\d+(\.\d+)?/.exec(text);
    return num ? parseFloat(num[0]) : text.toLowerCase();
  }

  function sortBy(table, col) {
    const th = table.tHead.rows[0].cells[col];
    const groups = Array.from(table.tBodies);
    const keyed = groups.map(g => [key(g, col), Number(g.dataset.order), g]);
    const numeric = keyed.some(([k]) => typeof k === 'number');
    const was = th.getAttribute('aria-sort');
    // first click: numbers high to low, text A to Z; then each click flips it
    const dir = was ? (was === 'ascending' ? 'descending' : 'ascending') : (numeric ? 'descending' : 'ascending');
    for (const other of table.tHead.rows[0].cells) other.removeAttribute('aria-sort');
    th.setAttribute('aria-sort', dir);
    const sign = dir === 'ascending' ? 1 : -1;
    keyed.sort((a, b) => {
      if (a[0] === null || b[0] === null) {  // missing values last, whichever the direction
        return (a[0] === null) - (b[0] === null) || a[1] - b[1];
      }
      const cmp = typeof a[0] === typeof b[0] ? (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)
        : (typeof a[0] === 'number' ? -1 : 1);
      return sign * cmp || a[1] - b[1];
    });
    for (const [, , g] of keyed) table.appendChild(g);
  }

  function applyFilters() {
    const wanted = {};
    for (const s of document.querySelectorAll('select[data-filter]')) wanted[s.dataset.filter] = s.value;
    let shown = 0, total = 0;
    for (const section of document.querySelectorAll('main > section')) {
      const groups = section.querySelectorAll('table.lb > tbody');
      let here = 0;
      for (const g of groups) {
        const ok = Object.entries(wanted).every(([k, v]) => !v || g.dataset[k] === v);
        g.hidden = !ok;
        here += ok;
      }
      if (groups.length) section.hidden = here === 0;
      shown += here;
      total += groups.length;
    }
    document.getElementById('shown').textContent = `${shown} of ${total} rows shown`;
  }

  for (const table of document.querySelectorAll('table.lb')) {
    table.tHead.addEventListener('click', ev => {
      const th = ev.target.closest('th');
      if (th) sortBy(table, th.cellIndex);
    });
    table.addEventListener('click', ev => {
      const button = ev.target.closest('button.toggle');
      if (!button) return;
      const open = button.getAttribute('aria-expanded') !== 'true';
      button.setAttribute('aria-expanded', String(open));
      button.textContent = `${button.dataset.count} seeds ${open ? '\u25be' : '\u25b8'}`;
      for (const run of button.closest('tbody').querySelectorAll('tr.run')) run.hidden = !open;
    });
  }
  for (const s of document.querySelectorAll('select[data-filter]')) s.addEventListener('change', applyFilters);
  applyFilters();
})();
