/**
 * The text of a generation as it grows, token by token, without decoding the whole generation
 * again for every token (as vLLM's detokenizer does): each new piece is the decoding of a short
 * window minus the decoding of the window without its newest tokens. The window starts at the
 * tokens of the previous piece, so a decoder that treats a sequence's first token differently
 * (SentencePiece's leading space) treats both decodings alike, and the pieces join to the text
 * of the whole.
 */
export class IncrementalText {
  private readonly ids: number[] = [];
  /** ids[start, read) are in pieces already: decoded again only as the context of newer tokens. */
  private start = 0;
  private read = 0;

  constructor(private readonly decode: (ids: number[]) => string) {}

  /**
   * Adds a token and returns the text it completes: '' while the text ends inside a character (a
   * byte-level token), which then comes with a later piece, unless `last` says no token follows.
   */
  push(id: number, last: boolean): string {
    this.ids.push(id);
    const before = this.decode(this.ids.slice(this.start, this.read));
    const now = this.decode(this.ids.slice(this.start));
    if (!last && (now.length <= before.length || now.endsWith('\uFFFD'))) return '';
    this.start = this.read;
    this.read = this.ids.length;
    return now.slice(before.length);
  }
}
