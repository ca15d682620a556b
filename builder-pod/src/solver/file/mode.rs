//! `FileActionCopy.mode_str` (`COPY --chmod=u+x`): chmod(1)'s octal and
//! symbolic modes, read with a zero umask as BuildKit does
//! (tonistiigi/dchapes-mode `ParseWithUmask(s, 0)`).

const SET_ID: u32 = 0o6000;
const STICKY: u32 = 0o1000;
const ALL: u32 = 0o7777;
/// What `=` clears when no class is named: everything but the sticky bit.
const STANDARD: u32 = 0o6777;
const EXEC: u32 = 0o111;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Cmd {
    Clear(u32),
    Set(u32),
    /// `+X`: execute bits, only for directories and files some class can
    /// already execute.
    SetIfExecutable(u32),
    /// `g=u`, `o+g`, …: the permissions of class `from` (a shift: 6, 3, 0)
    /// copied to the classes in `to`.
    Copy {
        from: u32,
        to: [bool; 3],
        set: bool,
        clear: bool,
    },
}

/// A parsed mode string, applied per file with [`SymbolicMode::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SymbolicMode {
    cmds: Vec<Cmd>,
}

/// The mode string is not one chmod(1) accepts.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct InvalidMode;

impl SymbolicMode {
    pub(super) fn parse(s: &str) -> Result<Self, InvalidMode> {
        let b = s.as_bytes();
        match b.first() {
            None => Err(InvalidMode),
            Some(d) if d.is_ascii_digit() => {
                let v = u32::from_str_radix(s, 8).map_err(|_| InvalidMode)?;
                if v & !ALL != 0 {
                    return Err(InvalidMode);
                }
                Ok(Self { cmds: vec![Cmd::Clear(ALL), Cmd::Set(v)] })
            }
            Some(_) => Self::parse_symbolic(b),
        }
    }

    fn parse_symbolic(b: &[u8]) -> Result<Self, InvalidMode> {
        let mut cmds = Vec::new();
        let mut i = 0;
        loop {
            let mut who = 0u32;
            loop {
                match b.get(i) {
                    None => return Err(InvalidMode),
                    Some(b'a') => who |= STANDARD,
                    Some(b'u') => who |= 0o4700,
                    Some(b'g') => who |= 0o2070,
                    Some(b'o') => who |= 0o0007,
                    Some(_) => break,
                }
                i += 1;
            }
            // Several operators may follow one class list: `u+x-w`.
            let mut equal_done = false;
            loop {
                let op = *b.get(i).ok_or(InvalidMode)?;
                i += 1;
                match op {
                    b'+' | b'-' => {}
                    b'=' => equal_done = false,
                    _ => return Err(InvalidMode),
                }
                who &= !STICKY;
                let (mut perm, mut perm_x) = (0u32, 0u32);
                loop {
                    let c = b.get(i).copied().unwrap_or(0);
                    match c {
                        b'r' => perm |= 0o444,
                        b'w' => perm |= 0o222,
                        b'x' => perm |= EXEC,
                        // Set-id and sticky mean nothing for "other" alone.
                        b's' if who == 0 || who & !0o007 != 0 => perm |= SET_ID,
                        b't' if who == 0 || who & !0o007 != 0 => {
                            who |= STICKY;
                            perm |= STICKY;
                        }
                        b's' | b't' => {}
                        b'X' => {
                            if op == b'+' {
                                perm_x = EXEC;
                            }
                        }
                        b'u' | b'g' | b'o' => {
                            if perm != 0 {
                                push(&mut cmds, op, who, perm);
                                perm = 0;
                            }
                            if op == b'=' {
                                equal_done = true;
                            }
                            if perm_x != 0 {
                                push(&mut cmds, b'X', who, perm_x);
                                perm_x = 0;
                            }
                            let from = match c {
                                b'u' => 6,
                                b'g' => 3,
                                _ => 0,
                            };
                            let to = if who != 0 {
                                [who & 0o400 != 0, who & 0o040 != 0, who & 0o004 != 0]
                            } else {
                                [true; 3]
                            };
                            cmds.push(Cmd::Copy { from, to, set: op != b'-', clear: op != b'+' });
                        }
                        _ => {
                            if perm != 0 || (op == b'=' && !equal_done) {
                                equal_done |= op == b'=';
                                push(&mut cmds, op, who, perm);
                            }
                            if perm_x != 0 {
                                push(&mut cmds, b'X', who, perm_x);
                            }
                            break;
                        }
                    }
                    i += 1;
                }
                match b.get(i) {
                    None => return Ok(Self { cmds }),
                    Some(b',') => {
                        i += 1;
                        break;
                    }
                    Some(_) => {}
                }
            }
        }
    }

    /// The permission bits (`0o7777`) a file with `mode` gets.
    pub(super) fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        let orig = mode & ALL;
        let mut m = orig;
        for cmd in &self.cmds {
            match *cmd {
                Cmd::Clear(bits) => m &= !bits,
                Cmd::Set(bits) => m |= bits,
                Cmd::SetIfExecutable(bits) => {
                    if orig & EXEC != 0 || is_dir {
                        m |= bits;
                    }
                }
                Cmd::Copy { from, to, set, clear } => {
                    let value = (m >> from) & 0o7;
                    for (on, shift) in to.iter().zip([6u32, 3, 0]) {
                        if !on {
                            continue;
                        }
                        if clear {
                            let cleared = if set { 0o7 } else { value };
                            m &= !(cleared << shift);
                        }
                        if set {
                            m |= value << shift;
                        }
                    }
                }
            }
        }
        m & ALL
    }
}

/// One `+`, `-`, `=` or `X` clause for the classes in `who` (all when 0).
fn push(cmds: &mut Vec<Cmd>, op: u8, who: u32, perm: u32) {
    let bits = if who != 0 { who & perm } else { perm };
    match op {
        b'=' => {
            cmds.push(Cmd::Clear(if who != 0 { who } else { STANDARD }));
            cmds.push(Cmd::Set(bits));
        }
        b'+' => cmds.push(Cmd::Set(bits)),
        b'-' => cmds.push(Cmd::Clear(bits)),
        _ => cmds.push(Cmd::SetIfExecutable(bits)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_apply_as_chmod_would() {
        // (mode string, starting mode, is a directory, expected)
        let cases: &[(&str, u32, bool, u32)] = &[
            ("755", 0o644, false, 0o755),
            ("0640", 0o4777, false, 0o640),
            ("4755", 0o644, false, 0o4755),
            ("u+x", 0o644, false, 0o744),
            ("+x", 0o644, false, 0o755),
            ("a+x", 0o600, false, 0o711),
            ("go-w", 0o777, false, 0o755),
            ("u=rwx,go=rx", 0o000, false, 0o755),
            ("go=", 0o777, false, 0o700),
            ("=r", 0o4777, false, 0o444),
            ("+X", 0o644, false, 0o644),
            ("+X", 0o744, false, 0o755),
            ("+X", 0o600, true, 0o711),
            ("g=u", 0o640, false, 0o660),
            ("go=u-w", 0o755, false, 0o755),
            ("o+g", 0o650, false, 0o655),
            ("u+s", 0o755, false, 0o4755),
            ("g+s", 0o755, true, 0o2755),
            ("o+s", 0o755, false, 0o755),
            ("+t", 0o777, true, 0o1777),
            ("u+x-w", 0o644, false, 0o544),
            ("a-rwx,u+r", 0o777, false, 0o400),
        ];
        for (s, start, dir, want) in cases {
            let m = SymbolicMode::parse(s).unwrap_or_else(|_| panic!("{s} should parse"));
            assert_eq!(m.apply(*start, *dir), *want, "{s} on {start:o} (dir: {dir})");
        }
    }

    #[test]
    fn malformed_modes_are_rejected() {
        for s in ["", "u", "u+x,", "z+x", "u*x", "789", "17777", "u+x,,g+x"] {
            assert_eq!(SymbolicMode::parse(s), Err(InvalidMode), "{s:?}");
        }
    }
}
