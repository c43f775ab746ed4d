/**
 * The `text/event-stream` format (the SSE transport reads it from `fetch`, not `EventSource`).
 * Has no I/O, so it is tested alone with chunks split anywhere, also inside a CRLF.
 */

/** The `text/event-stream` format, fed in arbitrary chunks. */
export class SseParser {
  private pending = "";
  private type = "";
  private data: string[] = [];

  constructor(private readonly dispatch: (type: string, data: string) => void) {}

  push(chunk: string): void {
    let text = this.pending + chunk;
    const heldCR = text.endsWith("\r"); // maybe the first half of a CRLF
    if (heldCR) text = text.slice(0, -1);
    const lines = text.split(/\r\n|\r|\n/);
    this.pending = lines.pop()! + (heldCR ? "\r" : "");
    for (const line of lines) this.line(line);
  }

  private line(line: string): void {
    if (line === "") {
      if (this.data.length) this.dispatch(this.type || "message", this.data.join("\n"));
      this.type = "";
      this.data = [];
      return;
    }
    if (line.startsWith(":")) return; // a keep-alive comment
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.type = value;
    else if (field === "data") this.data.push(value);
    // `id` repeats the envelope's id; `retry` concerns EventSource only
  }
}
