// dlarena's HTML report: draws every chart from its Vega-Lite specification, and makes the table of
// cells sortable, filterable and expandable. No network: the libraries are inlined above this script.
"use strict";

function drawChart(element) {
  const spec = JSON.parse(document.getElementById(element.dataset.spec).textContent);
  return vegaEmbed(element, spec, { renderer: "svg", actions: false }).then(() => {
    element.dataset.drawn = "true";
  });
}

function drawCharts() {
  // The charts on the first screen first, then the rest: a reader sees the top of the page drawn
  // before the charts below it are built.
  const charts = Array.from(document.querySelectorAll("div.chart[data-spec]"));
  const onScreen = (element) => element.getBoundingClientRect().top < window.innerHeight;
  const first = charts.filter(onScreen);
  const rest = charts.filter((element) => !onScreen(element));
  // Milliseconds from the start of navigation, read by the browser tests and benchmarks/report_page.py.
  Promise.all(first.map(drawChart)).then(() => {
    document.body.dataset.firstScreenMs = String(Math.round(performance.now()));
    return Promise.all(rest.map(drawChart));
  }).then(() => {
    document.body.dataset.drawnMs = String(Math.round(performance.now()));
    document.body.dataset.chartsDrawn = String(charts.length);
  }).catch((error) => {
    document.body.dataset.chartsFailed = String(error);
    console.error("dlarena report: a chart failed to draw", error);
  });
}

function cellValue(row, column) {
  const cell = row.cells[column];
  const sortKey = cell.dataset.sort;
  if (sortKey !== undefined && sortKey !== "") return Number(sortKey);
  return cell.textContent.trim().toLowerCase();
}

function sortTable(table, column, header) {
  const body = table.tBodies[0];
  const ascending = header.dataset.order !== "ascending";
  table.querySelectorAll("th").forEach((th) => { delete th.dataset.order; });
  header.dataset.order = ascending ? "ascending" : "descending";
  const rows = Array.from(body.querySelectorAll("tr.cell-row"));
  rows.sort((a, b) => {
    const x = cellValue(a, column), y = cellValue(b, column);
    const xEmpty = x === "" || Number.isNaN(x), yEmpty = y === "" || Number.isNaN(y);
    if (xEmpty !== yEmpty) return xEmpty ? 1 : -1;  // cells without a figure last, either way
    const order = x < y ? -1 : x > y ? 1 : 0;
    return ascending ? order : -order;
  });
  rows.forEach((row) => {
    body.appendChild(row);
    const details = document.getElementById(row.dataset.details);
    if (details) body.appendChild(details);
  });
}

function filterTable(table) {
  const filters = Array.from(document.querySelectorAll("select.filter[data-table='" + table.id + "']"));
  let shown = 0;
  table.querySelectorAll("tr.cell-row").forEach((row) => {
    const visible = filters.every((select) => select.value === "" || row.dataset[select.dataset.key] === select.value);
    row.hidden = !visible;
    const details = document.getElementById(row.dataset.details);
    if (details && !visible) details.hidden = true;
    if (visible) shown += 1;
  });
  const counter = document.getElementById(table.id + "-shown");
  if (counter) counter.textContent = String(shown);
}

function setUpTables() {
  document.querySelectorAll("table.sortable").forEach((table) => {
    table.querySelectorAll("thead th").forEach((header, column) => {
      header.addEventListener("click", () => sortTable(table, column, header));
    });
    table.querySelectorAll("tr.cell-row").forEach((row) => {
      row.addEventListener("click", (event) => {
        if (event.target.closest("a, select, button")) return;
        const details = document.getElementById(row.dataset.details);
        if (details) details.hidden = !details.hidden;
      });
    });
  });
  document.querySelectorAll("select.filter").forEach((select) => {
    select.addEventListener("change", () => filterTable(document.getElementById(select.dataset.table)));
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setUpTables();
  drawCharts();
});
