//! Every parser of outside identifiers: no panic, and what parses prints back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskpass_core::{AgentName, Audience, Purpose, Scope, ScopeSet, TaskId, TokenId, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(n) = AgentName::parse(s) {
        assert_eq!(n.as_str(), s);
    }
    if let Ok(t) = TaskId::parse(s) {
        assert_eq!(TaskId::parse(&t.to_string()).ok(), Some(t));
    }
    let _ = TokenId::parse(s);
    let _ = TrustDomain::parse(s);
    let _ = Scope::parse(s);
    let _ = Audience::parse(s);
    let _ = Purpose::parse(s);
    if let Ok(set) = ScopeSet::parse_claim(s) {
        assert_eq!(ScopeSet::parse_claim(&set.to_claim()).ok(), Some(set));
    }
});
