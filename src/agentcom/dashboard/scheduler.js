// Drawing at most once per animation frame, whatever the event rate: events only mark parts
// of the page dirty; the next frame redraws each dirty part once.

/**
 * Runs each part's draw function on the next animation frame after it is marked dirty.
 *
 * A part may also have a minimum interval between draws (for the heavier ones, such as the
 * task table): marked again sooner, it is drawn once the interval has passed.
 */
export class FrameScheduler {
  /**
   * @param {Record<string, {draw: () => void, minIntervalMs?: number}>} parts
   * @param {Set<string>} dirty the shared set of parts to redraw (the state marks it)
   */
  constructor(parts, dirty) {
    this.parts = parts;
    this.dirty = dirty;
    this.order = Object.keys(parts);
    this.lastDrawn = new Map();
    this.frameRequested = false;
    this.timer = null;
    this.flush = this.flush.bind(this);
  }

  /** Ask for a frame if anything is dirty (parts nobody draws are forgotten). */
  request() {
    for (const name of this.dirty) if (!(name in this.parts)) this.dirty.delete(name);
    if (this.frameRequested || !this.dirty.size) return;
    this.frameRequested = true;
    requestAnimationFrame(this.flush);
  }

  flush() {
    this.frameRequested = false;
    const now = performance.now();
    let soonest = Infinity;
    // Parts are drawn in the order they were given, whatever order they were marked in, so
    // a part that must measure the page (the log scrolls to its tail) can come last and
    // measure once, after every other change of the frame.
    for (const name of this.order) {
      if (!this.dirty.has(name)) continue;
      const part = this.parts[name];
      const wait = (this.lastDrawn.get(name) ?? -Infinity) + (part.minIntervalMs || 0) - now;
      if (wait > 0) {
        soonest = Math.min(soonest, wait);
        continue;
      }
      this.dirty.delete(name);
      this.lastDrawn.set(name, now);
      try {
        part.draw();
      } catch (error) {
        // One broken part must not stop the others from updating.
        console.error(`drawing ${name} failed`, error);
      }
    }
    if (soonest !== Infinity && this.timer === null) {
      this.timer = setTimeout(() => {
        this.timer = null;
        this.request();
      }, soonest);
    }
  }
}
