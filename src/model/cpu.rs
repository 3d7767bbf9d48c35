//! The CPU's instruction-set features that decide which precision runs fast on it: read from
//! `/proc/cpuinfo`'s `flags` line (the same names `grep -o -w ... /proc/cpuinfo` prints in
//! BENCHMARKS.md), or given as a flag string so that the choices built on them are testable on any
//! machine.

/// The features that matter to the precision choice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuFeatures {
    pub avx2: bool,
    pub avx512f: bool,
    pub avx512_vnni: bool,
    pub avx512_bf16: bool,
    pub amx_bf16: bool,
    pub amx_int8: bool,
}

impl CpuFeatures {
    /// This machine's features. Outside Linux/x86-64 (no `/proc/cpuinfo` flags) none are reported,
    /// so nothing that needs them is chosen or allowed.
    pub fn detect() -> Self {
        match std::fs::read_to_string("/proc/cpuinfo") {
            Ok(text) => Self::from_cpuinfo(&text),
            Err(_) => Self::default(),
        }
    }

    /// The features of the first `flags` line of a `/proc/cpuinfo` text.
    pub fn from_cpuinfo(cpuinfo: &str) -> Self {
        cpuinfo
            .lines()
            .find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == "flags").then(|| Self::from_flags(value))
            })
            .unwrap_or_default()
    }

    /// Features from a whitespace-separated list of `/proc/cpuinfo` flag names.
    pub fn from_flags(flags: &str) -> Self {
        let mut f = CpuFeatures::default();
        for flag in flags.split_whitespace() {
            match flag {
                "avx2" => f.avx2 = true,
                "avx512f" => f.avx512f = true,
                "avx512_vnni" => f.avx512_vnni = true,
                "avx512_bf16" => f.avx512_bf16 = true,
                "amx_bf16" => f.amx_bf16 = true,
                "amx_int8" => f.amx_int8 = true,
                _ => {}
            }
        }
        f
    }

    /// bf16 arithmetic in hardware (AVX512-BF16 dot products or AMX-BF16 tiles): what OpenVINO's
    /// bf16 inference precision needs to be worth running (elsewhere it emulates, slowly).
    pub fn has_bf16(&self) -> bool {
        self.avx512_bf16 || self.amx_bf16
    }

    /// INT8 dot products in hardware (VNNI or AMX-INT8): where the dynamic INT8 variant is fast.
    pub fn has_int8_dot(&self) -> bool {
        self.avx512_vnni || self.amx_int8
    }

    /// The flags present, space-separated, in a fixed order (for logs and Info).
    pub fn describe(&self) -> String {
        let names = [
            ("avx2", self.avx2),
            ("avx512f", self.avx512f),
            ("avx512_vnni", self.avx512_vnni),
            ("avx512_bf16", self.avx512_bf16),
            ("amx_bf16", self.amx_bf16),
            ("amx_int8", self.amx_int8),
        ];
        let present: Vec<&str> = names
            .iter()
            .filter_map(|&(name, on)| on.then_some(name))
            .collect();
        if present.is_empty() {
            "none of avx2, avx512f, avx512_vnni, avx512_bf16, amx_bf16, amx_int8".to_string()
        } else {
            present.join(" ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_flags_line_of_cpuinfo() {
        let text = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16 sha_ni\n\
                    processor\t: 1\nflags\t\t: fpu\n";
        let f = CpuFeatures::from_cpuinfo(text);
        assert!(f.avx2 && f.avx512f && f.avx512_vnni && f.avx512_bf16);
        assert!(!f.amx_bf16 && !f.amx_int8);
        assert!(f.has_bf16() && f.has_int8_dot());
        assert_eq!(f.describe(), "avx2 avx512f avx512_vnni avx512_bf16");
        // A flag name is matched whole: "avx512_bf16x" or "amx_tile" are not AMX-BF16.
        let g = CpuFeatures::from_flags("avx2 amx_tile avx512_bf16x");
        assert!(g.avx2 && !g.has_bf16() && !g.amx_bf16);
        assert_eq!(
            CpuFeatures::from_cpuinfo("no flags here"),
            CpuFeatures::default()
        );
        assert!(!CpuFeatures::default().has_bf16());
        assert!(CpuFeatures::default().describe().starts_with("none of"));
    }
}
