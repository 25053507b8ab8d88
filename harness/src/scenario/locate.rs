//! Positions of keys in a YAML text, for errors found after parsing.
//!
//! serde_yaml reports a position for syntax and type errors only. A semantic error (a
//! `tpm_pin` protector without a PIN, say) is found on the typed value, which has no
//! positions; this module re-reads the text with yaml-rust2's event parser, which marks
//! every node, and answers "where is `recovery.as`?". It handles block and flow style alike.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// One step of a path into the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(&'static str),
    Index(usize),
}

impl std::fmt::Display for Seg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Seg::Key(k) => f.write_str(k),
            Seg::Index(i) => write!(f, "[{i}]"),
        }
    }
}

/// `device.protectors[1]`
pub fn path_string(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        if matches!(seg, Seg::Key(_)) && !out.is_empty() {
            out.push('.');
        }
        out.push_str(&seg.to_string());
    }
    out
}

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

#[derive(Debug)]
enum Node {
    Map(Vec<(String, Pos, Node)>),
    Seq(Vec<(Pos, Node)>),
    /// A scalar (or alias): where its value starts, and whether it is written unquoted.
    Leaf {
        at: Pos,
        plain: bool,
    },
}

/// The parsed document's shape with positions; `None` when the text is not YAML (the serde
/// parse reports that error itself).
#[derive(Debug)]
pub struct Locator {
    root: Option<(Pos, Node)>,
}

impl Locator {
    pub fn new(text: &str) -> Locator {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut builder, false).is_err() {
            return Locator { root: None };
        }
        Locator {
            root: builder.done.take(),
        }
    }

    /// Where the scalar at `path` starts, when it is written plain (unquoted, not a block
    /// scalar); `None` when it is quoted, missing or not a scalar.
    pub fn plain_scalar(&self, path: &[Seg]) -> Option<Pos> {
        match self.node(path)? {
            Node::Leaf { at, plain: true } => Some(*at),
            _ => None,
        }
    }

    /// Whether the document writes something at `path` (a key with any value, an item).
    pub fn has(&self, path: &[Seg]) -> bool {
        self.node(path).is_some()
    }

    fn node(&self, path: &[Seg]) -> Option<&Node> {
        let mut node = &self.root.as_ref()?.1;
        for seg in path {
            node = match (seg, node) {
                (Seg::Key(k), Node::Map(entries)) => entries
                    .iter()
                    .find(|(key, _, _)| key == k)
                    .map(|(_, _, child)| child)?,
                (Seg::Index(i), Node::Seq(items)) => items.get(*i).map(|(_, child)| child)?,
                _ => return None,
            };
        }
        Some(node)
    }

    /// The lines on which the top-level keys start, in order, when the document is a
    /// block mapping whose keys all start in column 1 (so each key's lines can be cut out
    /// and read alone); `None` otherwise.
    pub fn top_level_key_lines(&self) -> Option<Vec<usize>> {
        let Some((_, Node::Map(entries))) = &self.root else {
            return None;
        };
        let lines: Vec<usize> = entries.iter().map(|(_, pos, _)| pos.line).collect();
        let block = entries.iter().all(|(_, pos, _)| pos.column == 1)
            && lines.windows(2).all(|w| w[0] < w[1]);
        (block && !lines.is_empty()).then_some(lines)
    }

    /// The position of the deepest node on `path` that exists: the key itself for a
    /// mapping entry, the item for a sequence index. So a missing `recovery.end_user`
    /// points at `recovery`.
    pub fn locate(&self, path: &[Seg]) -> Pos {
        let Some((root_pos, root)) = &self.root else {
            return Pos { line: 1, column: 1 };
        };
        let mut best = *root_pos;
        let mut node = root;
        for seg in path {
            let next = match (seg, node) {
                (Seg::Key(k), Node::Map(entries)) => entries
                    .iter()
                    .find(|(key, _, _)| key == k)
                    .map(|(_, pos, child)| (*pos, child)),
                (Seg::Index(i), Node::Seq(items)) => {
                    items.get(*i).map(|(pos, child)| (*pos, child))
                }
                _ => None,
            };
            match next {
                Some((pos, child)) => {
                    best = pos;
                    node = child;
                }
                None => break,
            }
        }
        best
    }
}

fn pos(mark: Marker) -> Pos {
    // yaml-rust2 marks: line 1-based, column 0-based; report both 1-based like serde_yaml.
    Pos {
        line: mark.line(),
        column: mark.col() + 1,
    }
}

enum Frame {
    Map {
        pos: Pos,
        entries: Vec<(String, Pos, Node)>,
        pending_key: Option<(String, Pos)>,
    },
    Seq {
        pos: Pos,
        items: Vec<(Pos, Node)>,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    done: Option<(Pos, Node)>,
}

impl Builder {
    fn value(&mut self, at: Pos, node: Node, key_text: Option<String>) {
        match self.stack.last_mut() {
            None => {
                if self.done.is_none() {
                    self.done = Some((at, node));
                }
            }
            Some(Frame::Seq { items, .. }) => items.push((at, node)),
            Some(Frame::Map {
                entries,
                pending_key,
                ..
            }) => match pending_key.take() {
                Some((key, key_pos)) => entries.push((key, key_pos, node)),
                // This node is a key: remember its text (complex keys get an empty name).
                None => *pending_key = Some((key_text.unwrap_or_default(), at)),
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let at = pos(mark);
        match ev {
            Event::Scalar(text, style, ..) => {
                let plain = style == TScalarStyle::Plain;
                self.value(at, Node::Leaf { at, plain }, Some(text))
            }
            Event::Alias(_) => self.value(at, Node::Leaf { at, plain: false }, None),
            Event::MappingStart(..) => {
                self.stack.push(Frame::Map {
                    pos: at,
                    entries: Vec::new(),
                    pending_key: None,
                });
            }
            Event::SequenceStart(..) => {
                self.stack.push(Frame::Seq {
                    pos: at,
                    items: Vec::new(),
                });
            }
            Event::MappingEnd | Event::SequenceEnd => match self.stack.pop() {
                Some(Frame::Map { pos, entries, .. }) => self.value(pos, Node::Map(entries), None),
                Some(Frame::Seq { pos, items }) => self.value(pos, Node::Seq(items), None),
                None => {}
            },
            _ => {}
        }
    }
}
