import numpy as np, sys
D=512
def unit(v): return v/np.linalg.norm(v,axis=-1,keepdims=True)
def make(n, nq, seed=1):
    rng=np.random.default_rng(seed)
    crng=np.random.default_rng(0x6A9)
    m_img=unit(crng.standard_normal(D)); other=unit(crng.standard_normal(D))
    o=unit(other-(other@m_img)*m_img); rho=0.25
    m_txt=rho*m_img+np.sqrt(1-rho*rho)*o
    S=max(n//100,10)
    C=unit(np.random.default_rng(7).standard_normal((S,D)).astype(np.float32))
    def draw(k, mean, w, r):
        s=r.integers(0,S,k)
        X=np.empty((k,D),np.float32)
        for a in range(0,k,100000):
            b=min(k,a+100000)
            X[a:b]=np.sqrt(w[0])*mean+np.sqrt(w[1])*C[s[a:b]]+np.sqrt(w[2])/np.sqrt(D)*r.standard_normal((b-a,D)).astype(np.float32)
        return unit(X).astype(np.float32)
    X=draw(n, m_img, [0.45,0.35,0.2], rng)
    QI=draw(nq, m_img, [0.45,0.35,0.2], np.random.default_rng(seed+1))
    QT=draw(nq, m_txt, [0.5,0.09,0.41], np.random.default_rng(seed+2))
    return X,QI,QT
if __name__=="__main__":
    n=int(sys.argv[1]); X,QI,QT=make(n,200)
    np.save(f"/tmp/proto/X{n}.npy",X); np.save(f"/tmp/proto/QI{n}.npy",QI); np.save(f"/tmp/proto/QT{n}.npy",QT)
    for name,Q in (("img",QI),("txt",QT)):
        S=Q@X.T
        gt=np.argsort(-S,axis=1)[:,:10]
        np.save(f"/tmp/proto/gt_{name}{n}.npy",gt)
        print(name, "top10 mean cos", np.take_along_axis(S,gt,1).mean(), "mean", S.mean())
