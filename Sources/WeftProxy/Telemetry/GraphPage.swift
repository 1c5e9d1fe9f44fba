/// The service graph page the agent serves on its metrics port (/graph): one HTML file,
/// no outside assets, that fetches /graph.json every two seconds and draws the graph as
/// SVG — clients on the left, services in the middle, the workloads serving them on the
/// right; each edge labelled with its rate, error share and p99, green when it went
/// through the mTLS tunnel, red when it had errors in the window.
enum GraphPage {
    static let html = #"""
    <!doctype html>
    <html lang="en">
    <head>
    <meta charset="utf-8">
    <title>weft service graph</title>
    <style>
      body { font: 14px system-ui, sans-serif; margin: 16px; color: #1d2430; background: #fafbfc; }
      h1 { font-size: 18px; margin: 0 0 4px; }
      #status { color: #5a6473; margin-bottom: 8px; }
      .node rect { fill: #fff; stroke: #8a94a6; stroke-width: 1.2; rx: 6; }
      .node.service rect { fill: #eef4ff; stroke: #4a78c2; }
      .node.unknown rect { fill: #f3f3f3; stroke-dasharray: 4 3; }
      .node text { font-size: 12px; }
      .edge path { fill: none; stroke: #8a94a6; stroke-width: 2; marker-end: url(#arrow); }
      .edge.mtls path { stroke: #2e8b57; }
      .edge.errors path { stroke: #c0392b; }
      .edge text { font-size: 11px; fill: #1d2430; }
      .legend span { margin-right: 16px; }
    </style>
    </head>
    <body>
    <h1>weft service graph</h1>
    <div id="status">loading…</div>
    <div class="legend"><span style="color:#2e8b57">━ mTLS</span><span style="color:#8a94a6">━ plaintext</span><span style="color:#c0392b">━ errors</span></div>
    <svg id="graph" xmlns="http://www.w3.org/2000/svg" width="1140" height="400">
      <defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">
        <path d="M 0 0 L 10 5 L 0 10 z" fill="#8a94a6"/></marker></defs>
      <g id="edges"></g><g id="nodes"></g>
    </svg>
    <script>
    const NS = "http://www.w3.org/2000/svg";
    const W = 220, H = 34, COLS = [20, 460, 900];
    function el(name, attrs, parent) {
      const e = document.createElementNS(NS, name);
      for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
      if (parent) parent.appendChild(e);
      return e;
    }
    // Two lines: the rate and error share; the p99 and the transport.
    function label(e) {
      const first = [(e.rate < 10 ? e.rate.toFixed(2) : e.rate.toFixed(1)) + (e.protocolName === "tcp" ? " conn/s" : " req/s")];
      if (e.errorRate !== undefined && e.errorRate !== null) first.push((e.errorRate * 100).toFixed(1) + "% err");
      const second = [];
      if (e.p99Millis !== undefined && e.p99Millis !== null) second.push("p99 " + e.p99Millis.toFixed(1) + " ms");
      second.push((e.mutualTLS ? "mTLS" : "plaintext") + " · " + e.protocolName);
      return [first.join(" · "), second.join(" · ")];
    }
    function draw(g) {
      const edges = document.getElementById("edges"), nodes = document.getElementById("nodes");
      edges.replaceChildren(); nodes.replaceChildren();
      // Column: services in the middle, what calls them on the left, what serves them on the right.
      const col = {};
      for (const n of g.nodes) col[n.kind + ":" + n.name] = n.kind === "service" ? 1 : 0;
      for (const e of g.edges) if (e.source.startsWith("service:")) col[e.destination] = 2;
      const rows = [0, 0, 0], pos = {};
      for (const n of g.nodes) {
        const id = n.kind + ":" + n.name, c = col[id];
        pos[id] = { x: COLS[c], y: 20 + rows[c]++ * 70 };
        const grp = el("g", { class: "node " + n.kind, "data-id": id }, nodes);
        el("rect", { x: pos[id].x, y: pos[id].y, width: W, height: H }, grp);
        el("text", { x: pos[id].x + 10, y: pos[id].y + 21 }, grp).textContent = (n.kind === "service" ? "◆ " : "● ") + n.name;
      }
      document.getElementById("graph").setAttribute("height", Math.max(200, 40 + Math.max(...rows) * 70));
      for (const e of g.edges) {
        const a = pos[e.source], b = pos[e.destination];
        if (!a || !b) continue;
        const cls = "edge" + (e.mutualTLS ? " mtls" : "") + (e.errorRate > 0 ? " errors" : "");
        const grp = el("g", { class: cls, "data-source": e.source, "data-destination": e.destination }, edges);
        const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2, mx = (x1 + x2) / 2;
        el("path", { d: `M ${x1} ${y1} C ${mx} ${y1}, ${mx} ${y2}, ${x2} ${y2}` }, grp);
        const [l1, l2] = label(e), t = el("text", { x: mx, y: (y1 + y2) / 2 - 18, "text-anchor": "middle" }, grp);
        el("tspan", { x: mx, dy: 0 }, t).textContent = l1;
        el("tspan", { x: mx, dy: 13 }, t).textContent = l2;
      }
      document.getElementById("status").textContent =
        `${g.nodes.length} nodes, ${g.edges.length} edges · rates over ${Math.round(g.window)} s · ${new Date().toLocaleTimeString()}`;
    }
    async function refresh() {
      try {
        const r = await fetch("graph.json?window=60");
        draw(await r.json());
      } catch (err) {
        document.getElementById("status").textContent = "cannot read graph.json: " + err;
      }
    }
    refresh();
    setInterval(refresh, 2000);
    </script>
    </body>
    </html>
    """#
}
